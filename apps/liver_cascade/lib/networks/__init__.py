from lib.networks.resnet_fcn import ResNetFCN, resnet_fcn
from lib.networks.vgg_fcn import VGGFCN, vgg_fcn

ARCHITECTURES = {"resnet": resnet_fcn, "vgg": vgg_fcn}


def build_network(arch: str, preset: str, in_channels: int):
    """One entry point for every network of the app."""
    return ARCHITECTURES[arch](preset, in_channels=in_channels)
