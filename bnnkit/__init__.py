"""bnnkit: Bayesian detectors of AI-generated images on GenImage.

Plugin authors import :data:`hookimpl` from here::

    from bnnkit import hookimpl

    @hookimpl
    def register_attention(register):
        register("myblock", MyBlock)
"""

from bnnkit.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["__version__", "hookimpl"]
