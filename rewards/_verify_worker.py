"""Compatibility alias: the math-verify worker lives in ``reasoning_gym.judging._verify_worker``."""

from __future__ import annotations

from reasoning_gym.judging._verify_worker import main, verify_pair

__all__ = ["main", "verify_pair"]

if __name__ == "__main__":
    main()
