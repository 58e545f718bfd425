from sb3_mpo.common.hyperparams import load_hyperparams
from sb3_mpo.mpo import MPO, IncompatibleParametersError, NonFiniteError
from sb3_mpo.version import __version__

__all__ = ["MPO", "IncompatibleParametersError", "NonFiniteError", "__version__", "load_hyperparams"]
