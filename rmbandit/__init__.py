"""rmbandit: route preference labelling between reward models with contextual bandits."""
__version__ = "0.1.0"
