import copy

import torch
from torch import nn

from ml.augment import Augmenter
from ml.config import make_config
from ml.model import ModelConfig, build_model
from ml.train import MeanTeacher, consistency_loss, cosine_lr, ema_update, sigmoid_rampup


def _pair():
    torch.manual_seed(0)
    student = build_model(ModelConfig(width=0.125, image_size=32))
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return student, teacher


def test_consistency_loss_grad_reaches_student_not_teacher():
    student, teacher = _pair()
    # make them differ so the loss is not zero
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.05 * torch.randn_like(p))
        for p in teacher.parameters():
            p.requires_grad_(True)  # even if the caller forgot to freeze the teacher
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    student.train()
    teacher.eval()
    loss = consistency_loss(student(x), teacher(x))
    assert loss.item() > 0
    loss.backward()
    student_grads = [p.grad for p in student.parameters()]
    assert all(g is not None for g in student_grads)
    assert sum(float(g.abs().sum()) for g in student_grads) > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_mean_teacher_step_trains_student_only():
    student, teacher = _pair()
    config = make_config("tiny", "mean-teacher")
    algo = MeanTeacher(config, student, teacher, Augmenter(0.1, True, True, True))
    xl = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    xu = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    loss, n = algo.train_step(xl, torch.tensor([0, 1, 2, 3]), xu, ramp=1.0)
    loss.backward()
    assert n == 8
    assert all(p.grad is None for p in teacher.parameters())
    head_grad = student.head.weight.grad
    assert head_grad is not None and head_grad.abs().sum() > 0


def test_consistency_loss_is_mse_of_softmax():
    s = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    t = torch.tensor([[0.0, 0.0], [0.0, 2.0]])
    ps, pt = s.softmax(1), t.softmax(1)
    assert torch.isclose(consistency_loss(s, t), ((ps - pt) ** 2).mean())


def test_ema_update_arithmetic_includes_buffers():
    student = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    teacher = copy.deepcopy(student)
    with torch.no_grad():
        for p in teacher.parameters():
            p.fill_(1.0)
        for p in student.parameters():
            p.fill_(3.0)
        teacher[1].running_mean.fill_(10.0)
        student[1].running_mean.fill_(20.0)
        teacher[1].running_var.fill_(1.0)
        student[1].running_var.fill_(5.0)
        student[1].num_batches_tracked.fill_(7)
    ema_update(teacher, student, decay=0.97)
    for p in teacher.parameters():
        assert torch.allclose(p, torch.full_like(p, 0.97 * 1.0 + 0.03 * 3.0))
    assert torch.allclose(teacher[1].running_mean, torch.full((2,), 0.97 * 10 + 0.03 * 20))
    assert torch.allclose(teacher[1].running_var, torch.full((2,), 0.97 * 1 + 0.03 * 5))
    assert int(teacher[1].num_batches_tracked) == 7
    # the student is untouched
    assert all(torch.all(p == 3.0) for p in student.parameters())
    ema_update(teacher, student, decay=0.5)
    expected = 0.5 * (0.97 + 0.09) + 0.5 * 3.0
    assert torch.allclose(teacher[0].weight, torch.full_like(teacher[0].weight, expected))


def test_schedules():
    assert cosine_lr(0, 100, 0.05) == 0.05
    assert abs(cosine_lr(50, 100, 0.05) - 0.025) < 1e-9
    assert cosine_lr(100, 100, 0.05) < 1e-12
    assert cosine_lr(0, 100, 0.05, warmup=10) == 0.005
    assert sigmoid_rampup(0.0, 0.3) < 0.01 and sigmoid_rampup(0.3, 0.3) == 1.0
    assert sigmoid_rampup(0.1, 0.3) < sigmoid_rampup(0.2, 0.3) < 1.0


def test_strong_student_changes_only_the_students_view_of_unlabelled_cells():
    student, teacher = _pair()
    seen = []
    student.register_forward_hook(lambda module, args, out: seen.append(args[0].detach().float().clone()))
    xl = torch.full((2, 3, 32, 32), 100, dtype=torch.uint8)
    xu = torch.full((2, 3, 32, 32), 100, dtype=torch.uint8)
    for strong in (False, True):
        config = make_config("tiny", "mean-teacher", strong_student=strong, translate=0.0)
        algo = MeanTeacher(config, student, teacher, Augmenter(0.0, True, True, True, seed=1))
        algo.train_step(xl, torch.tensor([0, 1]), xu, ramp=1.0)
    weak_view, strong_view = seen
    # A flat image is unchanged by translation and flips; only the strong view's colour jitter
    # and cutout move it, and only on the unlabelled half.
    assert torch.equal(weak_view, torch.full_like(weak_view, 100.0))
    assert torch.equal(strong_view[:2], weak_view[:2])
    assert not torch.equal(strong_view[2:], weak_view[2:])


def test_mixup_blends_each_cell_with_another_at_one_weight_of_at_least_a_half():
    from ml.train import mixup

    torch.manual_seed(0)
    x = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 3, 2, 2) * 10
    for _ in range(20):
        mixed, partner, weight = mixup(x, 0.4)
        assert 0.5 <= weight <= 1.0
        assert sorted(partner.tolist()) == [0, 1, 2, 3]
        assert torch.allclose(mixed, weight * x + (1 - weight) * x[partner])


def test_supervised_step_with_mixup_takes_both_labels():
    import torch.nn.functional as F

    from ml.train import Supervised, mixup

    torch.manual_seed(0)
    model = build_model(ModelConfig(n_classes=3, width=0.125, image_size=16)).eval()  # no dropout
    augment = Augmenter(0.0, False, False, False, seed=0)  # the weak view is the image itself
    x = torch.randint(0, 255, (6, 3, 16, 16), dtype=torch.uint8)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    step = Supervised(make_config("tiny", "supervised", mixup=0.4), model, model, augment)
    torch.manual_seed(1)
    blend, partner, weight = mixup(x.float(), 0.4)
    with torch.no_grad():
        logits = model(blend)
    expected = weight * F.cross_entropy(logits, y) + (1 - weight) * F.cross_entropy(logits, y[partner])
    torch.manual_seed(1)
    loss, n = step.train_step(x, y, x[:0], 1.0)
    assert n == 6 and torch.isclose(loss, expected, atol=1e-5)
    assert not torch.equal(partner, torch.arange(6))  # some cell took another's label too
    loss.backward()
    assert model.head.weight.grad is not None and model.head.weight.grad.abs().sum() > 0


def test_interpolation_consistency_holds_the_student_on_mixed_cells_to_the_mixed_teacher():
    import torch.nn.functional as F

    from ml.train import mixup

    torch.manual_seed(0)
    student = build_model(ModelConfig(n_classes=3, width=0.125, image_size=16)).eval()  # no dropout
    teacher = copy.deepcopy(student)
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.05 * torch.randn_like(p))  # so the teacher's targets differ from the student's
    augment = Augmenter(0.0, False, False, False, seed=0)  # the weak view is the image itself
    xl = torch.randint(0, 255, (2, 3, 16, 16), dtype=torch.uint8)
    xu = torch.randint(0, 255, (4, 3, 16, 16), dtype=torch.uint8)
    yl = torch.tensor([0, 2])
    config = make_config("tiny", "mean-teacher", consistency_mixup=0.5, consistency_weight=10.0)
    step = MeanTeacher(config, student, teacher, augment)
    torch.manual_seed(1)
    blend, partner, weight = mixup(xu.float(), 0.5)
    with torch.no_grad():
        target = teacher(xu.float()).softmax(dim=1)
        target = weight * target + (1 - weight) * target[partner]
        logits = student(torch.cat([xl.float(), blend]))
    expected = F.cross_entropy(logits[:2], yl) + 10.0 * F.mse_loss(logits[2:].softmax(dim=1), target)
    torch.manual_seed(1)
    loss, n = step.train_step(xl, yl, xu, ramp=1.0)
    assert n == 6 and torch.isclose(loss, expected, atol=1e-5)
    assert not torch.equal(partner, torch.arange(4))  # the student saw cells it was not shown unmixed
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert student.head.weight.grad is not None and student.head.weight.grad.abs().sum() > 0
