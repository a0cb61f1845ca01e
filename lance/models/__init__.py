"""Networks: the ImageNet-pretrained zoo (``zoo``: MobileNetV2, ResNets, MCUNet / ProxylessNAS
through ``mcunet``) and the continual-learning networks (``continual``).

``lance.models.build(...)`` and the zoo's other names are reachable from this package directly.
"""

from lance.models.zoo import *  # noqa: F401,F403  (the zoo is the package's public face)
from lance.models.zoo import IMAGENET_MEAN, IMAGENET_STD, __all__  # noqa: F401
