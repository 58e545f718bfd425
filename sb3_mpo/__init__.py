from sb3_mpo.common.hyperparams import load_hyperparams
from sb3_mpo.mpo import MPO, NonFiniteError
from sb3_mpo.version import __version__

__all__ = ["MPO", "NonFiniteError", "__version__", "load_hyperparams"]
