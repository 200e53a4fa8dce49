"""Cells: importing images, and the pixels kept for display and for the model."""
