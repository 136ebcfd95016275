"""Step-level Gymnasium environments for LLM reasoning; importing this package registers every ``openr/*`` id."""

from reasoning_gym.registration import register_envs

register_envs()

__all__ = ["register_envs"]
