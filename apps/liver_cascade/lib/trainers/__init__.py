"""Train tasks of the app; one per model, built by :func:`make_trainer`."""

from lib.trainers.liver import CascadeSliceTrainer, LiverSliceTrainer, RECIPE


TRAINERS = {  # model name -> what its train task does
    "liver_resnet": "Train stage one (dilated ResNet FCN) on 2D slices of labelled volumes",
    "liver_cascade": "Train the cascade (stage two) on stage one's maps",
    "vgg_fcn": "Train the VGG16 FCN-8s baseline (ablation)",
}


def make_trainer(name, model_dir, app_conf, conf):
    description = TRAINERS[name]
    if name == "liver_cascade":
        return CascadeSliceTrainer(model_dir, app_conf, description=description)
    arch = "vgg" if name == "vgg_fcn" else "resnet"
    return LiverSliceTrainer(model_dir, app_conf, task=name, arch=arch, in_channels=1, description=description)
