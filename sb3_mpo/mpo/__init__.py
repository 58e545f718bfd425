from sb3_mpo.mpo.mpo import MPO, IncompatibleParametersError, NonFiniteError
from sb3_mpo.mpo.policies import CnnPolicy, MlpPolicy, MultiInputPolicy

__all__ = ["MPO", "CnnPolicy", "IncompatibleParametersError", "MlpPolicy", "MultiInputPolicy", "NonFiniteError"]
