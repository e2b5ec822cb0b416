"""Registration only: importing this module must stay cheap (no torch)."""

from omnimm import hookimpl


@hookimpl
def omnimm_register(registries):
    registries.encoders.register_lazy(
        "thirdparty/tiny-cnn",
        "omnimm_thirdparty_encoder.encoder:TinyCNN",
        config="omnimm_thirdparty_encoder.config:TinyCNNConfig",
    )
