"""The continual-learning networks (paper App. A.2.1): a multi-head interface over a shared trunk.

Every model has ``features(x)`` (the shared trunk), ``heads`` (one ``nn.Linear`` per task, or
a single shared one) and ``forward(x, task)``. ``layers()`` names the shared conv / linear
layers that a continual method constrains (the heads are per task and train freely).

* :class:`AlexNetCL` (Split CIFAR-100): conv 3->64 k4, 64->128 k3, 128->256 k2 (no bias), each
  followed by BatchNorm without running statistics, ReLU, dropout (0.2, 0.2, 0.5) and 2x2
  max-pooling; fc 1024->2048->2048 (no bias) with BatchNorm1d, ReLU and dropout 0.5.
* :class:`ReducedResNet18` (5-Datasets, miniImageNet): BasicBlocks [2, 2, 2, 2] with 20, 40,
  80, 160 filters, 3x3 stem (stride 1 for 32x32 inputs, 2 for miniImageNet), BatchNorm without
  running statistics, 2x2 average pooling and flattening before the heads.
* :class:`MLP` (Permuted MNIST): 784-100-100, ReLU, no bias, one shared 10-class head.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lance.errors import LanceError

__all__ = ["ContinualNet", "AlexNetCL", "ReducedResNet18", "MLP", "build_cl_model", "CL_MODELS"]


class ContinualNet(nn.Module):
    """Shared trunk + per-task heads."""

    feature_dim: int

    def _make_heads(self, classes: Sequence[int], shared_head: bool) -> None:
        if shared_head and len(set(classes)) != 1:
            raise LanceError(f"a shared head needs every task to have the same classes, got {list(classes)}.")
        self.shared_head = shared_head
        self.task_classes = list(classes)
        n_heads = 1 if shared_head else len(classes)
        self.heads = nn.ModuleList([nn.Linear(self.feature_dim, classes[i], bias=False) for i in range(n_heads)])

    def head(self, task: int) -> nn.Linear:
        if not 0 <= task < len(self.task_classes):
            raise LanceError(f"task {task} does not exist: this model has {len(self.task_classes)} tasks.")
        return self.heads[0 if self.shared_head else task]

    def forward(self, x: Tensor, task: int = 0) -> Tensor:
        return self.head(task)(self.features(x))

    def layers(self) -> list[str]:
        """The shared conv / linear layers, in forward order."""
        return [n for n, m in self.named_modules()
                if isinstance(m, (nn.Conv2d, nn.Linear)) and not n.startswith("heads.")]

    def norm_parameters(self) -> list[nn.Parameter]:
        """BatchNorm parameters: learned on the first task only (App. A.2.1)."""
        return [p for m in self.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) for p in m.parameters()]


class AlexNetCL(ContinualNet):
    def __init__(self, classes: Sequence[int], in_channels: int = 3, size: int = 32, shared_head: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 4, bias=False)
        self.bn1 = nn.BatchNorm2d(64, track_running_stats=False)
        self.conv2 = nn.Conv2d(64, 128, 3, bias=False)
        self.bn2 = nn.BatchNorm2d(128, track_running_stats=False)
        self.conv3 = nn.Conv2d(128, 256, 2, bias=False)
        self.bn3 = nn.BatchNorm2d(256, track_running_stats=False)
        s = size
        for k in (4, 3, 2):
            s = (s - k + 1) // 2
        if s < 1:
            raise LanceError(f"AlexNetCL needs inputs of at least 32x32 pixels, got {size}.")
        self.fc1 = nn.Linear(256 * s * s, 2048, bias=False)
        self.bn4 = nn.BatchNorm1d(2048, track_running_stats=False)
        self.fc2 = nn.Linear(2048, 2048, bias=False)
        self.bn5 = nn.BatchNorm1d(2048, track_running_stats=False)
        self.drop_conv = nn.Dropout(0.2)
        self.drop_deep = nn.Dropout(0.5)
        self.feature_dim = 2048
        self._make_heads(classes, shared_head)

    def features(self, x: Tensor) -> Tensor:
        x = F.max_pool2d(self.drop_conv(F.relu(self.bn1(self.conv1(x)))), 2)
        x = F.max_pool2d(self.drop_conv(F.relu(self.bn2(self.conv2(x)))), 2)
        x = F.max_pool2d(self.drop_deep(F.relu(self.bn3(self.conv3(x)))), 2)
        x = self.drop_deep(F.relu(self.bn4(self.fc1(x.flatten(1)))))
        return self.drop_deep(F.relu(self.bn5(self.fc2(x))))


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout, track_running_stats=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout, track_running_stats=False)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout, track_running_stats=False))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ReducedResNet18(ContinualNet):
    def __init__(self, classes: Sequence[int], in_channels: int = 3, size: int = 32, nf: int = 20,
                 stem_stride: int = 1, shared_head: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, nf, 3, stem_stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(nf, track_running_stats=False)
        blocks, cin = [], nf
        for i, (mult, stride) in enumerate([(1, 1), (2, 2), (4, 2), (8, 2)]):
            cout = nf * mult
            blocks += [_Block(cin, cout, stride), _Block(cout, cout, 1)]
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        with torch.no_grad():
            self.feature_dim = self._trunk(torch.zeros(2, in_channels, size, size)).shape[1]
        self._make_heads(classes, shared_head)

    def _trunk(self, x: Tensor) -> Tensor:
        x = self.blocks(F.relu(self.bn1(self.conv1(x))))
        return F.avg_pool2d(x, 2).flatten(1)

    def features(self, x: Tensor) -> Tensor:
        return self._trunk(x)


class MLP(ContinualNet):
    def __init__(self, classes: Sequence[int], in_features: int = 784, hidden: int = 100, shared_head: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, hidden, bias=False)
        self.feature_dim = hidden
        self._make_heads(classes, shared_head)

    def features(self, x: Tensor) -> Tensor:
        return F.relu(self.fc2(F.relu(self.fc1(x.flatten(1)))))


CL_MODELS = {"alexnet": AlexNetCL, "resnet18_reduced": ReducedResNet18, "mlp": MLP}

DEFAULT_MODEL = {"split_cifar100": "alexnet", "five_datasets": "resnet18_reduced",
                 "split_miniimagenet": "resnet18_reduced", "permuted_mnist": "mlp"}


def build_cl_model(name: str, classes: Sequence[int], input_shape: Sequence[int],
                   shared_head: bool = False, seed: Optional[int] = None) -> ContinualNet:
    """The network ``name`` for tasks with ``classes`` each, on inputs of ``input_shape`` (no batch)."""
    if seed is not None:
        torch.manual_seed(seed)
    if name == "mlp":
        return MLP(classes, in_features=int(torch.tensor(input_shape).prod()), shared_head=shared_head)
    if name not in CL_MODELS:
        raise LanceError(f"unknown continual-learning model {name!r}; choose one of {', '.join(CL_MODELS)}.")
    if len(input_shape) != 3:
        raise LanceError(f"{name} needs image inputs (C, H, W), got shape {tuple(input_shape)}.")
    c, h, _ = input_shape
    if name == "resnet18_reduced":
        return ReducedResNet18(classes, c, h, stem_stride=2 if h > 32 else 1, shared_head=shared_head)
    return AlexNetCL(classes, c, h, shared_head=shared_head)
