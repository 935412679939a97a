"""Architectures (registry), PIF, heads and the PI-H2T network."""

import functools

from pih2t_deploy.models.digits_net import digits_net
from pih2t_deploy.models.network import HEADS, METHODS, HeadName, MethodName, NetworkConfig, PIH2TNet
from pih2t_deploy.models.registry import (
    ArchSpec,
    arch_names,
    check_input_fits,
    create_arch,
    get_arch,
    register_arch,
)
from pih2t_deploy.models.resnet_cifar import resnet32
from pih2t_deploy.models.torchvision_archs import torchvision_factory

# Input sizes each architecture is built for: digits_net for tiny images, the CIFAR ResNet-32 around 32 pixels,
# the ImageNet ResNets (stride 32 to the last feature map) from 64 pixels on.
register_arch(ArchSpec("digits_net", digits_net, 64, 8, (1, 3), (8, 16)))
register_arch(ArchSpec("resnet32", resnet32, 64, 32, (1, 3), (24, 64)))
for _name, _width in (("resnet18", 512), ("resnet50", 2048), ("resnext50_32x4d", 2048), ("resnet152", 2048)):
    register_arch(
        ArchSpec(
            _name,
            functools.partial(torchvision_factory, _name),
            _width,
            224,
            (3,),
            (64, 1024),
        )
    )

__all__ = [
    "HEADS",
    "METHODS",
    "ArchSpec",
    "HeadName",
    "MethodName",
    "NetworkConfig",
    "PIH2TNet",
    "arch_names",
    "check_input_fits",
    "create_arch",
    "get_arch",
    "register_arch",
]
