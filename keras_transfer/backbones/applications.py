"""The `keras.applications` families in the backbone registry: each family's block rules
(which layer names form which block) and its sizes, input sizes and preprocessing.

Importing this module registers them (`keras_transfer.backbones` does).
"""

from __future__ import annotations

from collections.abc import Callable

import keras

from keras_transfer.backbones import registry

# Nothing to call: importing the module registers the families.
__all__ = []

# Rules per family, from the layer names `keras.applications` gives (stable names only:
# auto-generated names such as `conv2d_12` change with what was built before).
_MOBILENET_V1 = registry.BlockRules(
    rules=((r"^conv1(_|$)", "stem"), (r"^conv_(?:dw|pw|pad)_(\d+)", "conv_dw_{}"))
)
_MOBILENET_V2 = registry.BlockRules(
    rules=(
        (r"^(Conv1|bn_Conv1|Conv1_relu)$", "stem"),
        (r"^expanded_conv_", "block_0"),
        (r"^block_(\d+)_", "block_{}"),
        (r"^(Conv_1|Conv_1_bn|out_relu)$", "top"),
    )
)
_MOBILENET_V3 = registry.BlockRules(
    rules=(
        (r"^(rescaling|conv|conv_bn)$", "stem"),
        (r"^expanded_conv_(\d+)_", "block_{}"),
        (r"^expanded_conv_", "block_0"),
        (r"^conv_1(_bn)?$", "top"),
    )
)
_RESNET = registry.BlockRules(
    rules=(
        (r"^(conv1|pool1)_", "stem"),
        (r"^conv(\d)_", "conv{}"),
        (r"^post_(bn|relu)$", "top"),
    )
)
_DENSENET = registry.BlockRules(
    rules=(
        (r"^(conv1_|pool1$)", "stem"),
        (r"^(?:conv|pool)(\d)_", "conv{}"),
        (r"^(bn|relu)$", "top"),
    )
)
_VGG = registry.BlockRules(rules=((r"^block(\d)_", "block{}"),))
_XCEPTION = registry.BlockRules(rules=((r"^block(\d+)_", "block{}"),))
_EFFICIENTNET = registry.BlockRules(
    rules=(
        (r"^stem_", "stem"),
        (r"^block(\d[a-z])_", "block{}"),
        (r"^top_", "top"),
    )
)
_CONVNEXT = registry.BlockRules(
    rules=(
        (r"_(prestem_normalization|stem)$", "stem"),
        (r"_stage_(\d)_block_", "stage_{}"),
        # A downsampling layer opens the stage after it.
        (r"_downsampling_block_(\d)$", lambda m: f"stage_{int(m.group(1)) + 1}"),
    )
)
_INCEPTION_V3 = registry.BlockRules(
    rules=((r"^(mixed\d+)$", "{}"),),
    unnamed="next",
    stem_ends_with=keras.layers.MaxPooling2D,
)
_INCEPTION_RESNET_V2 = registry.BlockRules(
    rules=(
        (r"^(mixed_\w+)$", "{}"),
        (r"^(block(?:35|17|8)_\d+)", "{}"),
        (r"^conv_7b", "top"),
    ),
    unnamed="next",
    stem_ends_with=keras.layers.MaxPooling2D,
)
_NASNET = registry.BlockRules(
    rules=(
        (r"^stem_(conv1|bn1)$", "stem"),
        (r"_stem_(\d)$", "stem_{}"),
        (r"_reduce_(\d+)$", "reduce_{}"),
        (r"^(?:normal|adjust|separable_conv)_.*_(\d+)$", "cell_{}"),
    )
)


def _register_family(
    family: str,
    rules: registry.BlockRules,
    variants: dict[str, tuple[Callable[..., keras.Model], int]],
    *,
    preprocessing: str | None,
    model_name_pattern: str,
    min_size: int = 32,
) -> None:
    for name, (constructor, default_size) in variants.items():
        registry.register_backbone(
            registry.BackboneSpec(
                name=name,
                constructor=constructor,
                family=family,
                default_size=default_size,
                min_size=min_size,
                preprocessing=preprocessing,
                model_name_pattern=model_name_pattern,
                blocks=lambda model, rules=rules: registry.blocks_from_rules(model, rules),
            )
        )


_apps = keras.applications
_register_family(
    "convnext",
    _CONVNEXT,
    {
        "convnext_tiny": (_apps.ConvNeXtTiny, 224),
        "convnext_small": (_apps.ConvNeXtSmall, 224),
        "convnext_base": (_apps.ConvNeXtBase, 224),
        "convnext_large": (_apps.ConvNeXtLarge, 224),
        "convnext_xlarge": (_apps.ConvNeXtXLarge, 224),
    },
    preprocessing=None,
    model_name_pattern=r"^convnext_",
)
_register_family(
    "densenet",
    _DENSENET,
    {
        "densenet121": (_apps.DenseNet121, 224),
        "densenet169": (_apps.DenseNet169, 224),
        "densenet201": (_apps.DenseNet201, 224),
    },
    preprocessing="torch",
    model_name_pattern=r"^densenet\d+$",
)
_register_family(
    "efficientnet",
    _EFFICIENTNET,
    {
        f"efficientnet_b{i}": (getattr(_apps, f"EfficientNetB{i}"), size)
        for i, size in enumerate((224, 240, 260, 300, 380, 456, 528, 600))
    },
    preprocessing=None,
    model_name_pattern=r"^efficientnetb\d$",
)
_register_family(
    "efficientnet_v2",
    _EFFICIENTNET,
    {
        "efficientnet_v2_b0": (_apps.EfficientNetV2B0, 224),
        "efficientnet_v2_b1": (_apps.EfficientNetV2B1, 240),
        "efficientnet_v2_b2": (_apps.EfficientNetV2B2, 260),
        "efficientnet_v2_b3": (_apps.EfficientNetV2B3, 300),
        "efficientnet_v2_s": (_apps.EfficientNetV2S, 384),
        "efficientnet_v2_m": (_apps.EfficientNetV2M, 480),
        "efficientnet_v2_l": (_apps.EfficientNetV2L, 480),
    },
    preprocessing=None,
    model_name_pattern=r"^efficientnetv2-",
)
_register_family(
    "inception_v3",
    _INCEPTION_V3,
    {"inception_v3": (_apps.InceptionV3, 299)},
    preprocessing="tf",
    model_name_pattern=r"^inception_v3$",
    min_size=75,
)
_register_family(
    "inception_resnet_v2",
    _INCEPTION_RESNET_V2,
    {"inception_resnet_v2": (_apps.InceptionResNetV2, 299)},
    preprocessing="tf",
    model_name_pattern=r"^inception_resnet_v2$",
    min_size=75,
)
_register_family(
    "mobilenet",
    _MOBILENET_V1,
    {"mobilenet": (_apps.MobileNet, 224)},
    preprocessing="tf",
    model_name_pattern=r"^mobilenet_\d",
)
_register_family(
    "mobilenet_v2",
    _MOBILENET_V2,
    {"mobilenet_v2": (_apps.MobileNetV2, 224)},
    preprocessing="tf",
    model_name_pattern=r"^mobilenetv2_",
)
_register_family(
    "mobilenet_v3",
    _MOBILENET_V3,
    {
        "mobilenet_v3_small": (_apps.MobileNetV3Small, 224),
        "mobilenet_v3_large": (_apps.MobileNetV3Large, 224),
    },
    preprocessing=None,
    model_name_pattern=r"^MobileNetV3",
)
_register_family(
    "nasnet",
    _NASNET,
    {"nasnet_mobile": (_apps.NASNetMobile, 224), "nasnet_large": (_apps.NASNetLarge, 331)},
    preprocessing="tf",
    model_name_pattern=r"^nasnet_",
)
_register_family(
    "resnet",
    _RESNET,
    {
        "resnet50": (_apps.ResNet50, 224),
        "resnet101": (_apps.ResNet101, 224),
        "resnet152": (_apps.ResNet152, 224),
    },
    preprocessing="caffe",
    model_name_pattern=r"^resnet\d+$",
)
_register_family(
    "resnet_v2",
    _RESNET,
    {
        "resnet50_v2": (_apps.ResNet50V2, 224),
        "resnet101_v2": (_apps.ResNet101V2, 224),
        "resnet152_v2": (_apps.ResNet152V2, 224),
    },
    preprocessing="tf",
    model_name_pattern=r"^resnet\d+v2$",
)
_register_family(
    "vgg",
    _VGG,
    {"vgg16": (_apps.VGG16, 224), "vgg19": (_apps.VGG19, 224)},
    preprocessing="caffe",
    model_name_pattern=r"^vgg\d+$",
)
_register_family(
    "xception",
    _XCEPTION,
    {"xception": (_apps.Xception, 299)},
    preprocessing="tf",
    model_name_pattern=r"^xception$",
    min_size=71,
)
