from sb3_mpo.mpo.mpo import MPO, NonFiniteError
from sb3_mpo.mpo.policies import CnnPolicy, MlpPolicy, MultiInputPolicy

__all__ = ["MPO", "CnnPolicy", "MlpPolicy", "MultiInputPolicy", "NonFiniteError"]
