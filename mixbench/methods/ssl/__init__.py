"""Self-supervised methods: each file registers one framework (see ``base.SelfSupervised``)."""

from mixbench.methods.ssl import (  # noqa: F401  (they register)
    byol,
    dino,
    dino_mix,
    dino_sdmp,
    mocov2,
    mocov3,
    naive_mix,
    samix_ssl,
    sdmp,
    simclr,
)
from mixbench.methods.ssl.base import SSL_PARAMS, SelfSupervised

__all__ = ["SSL_PARAMS", "SelfSupervised"]
