"""Samples (specimens), their smear fields and located cells, and the differential count."""
