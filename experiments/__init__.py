"""openr-gym package."""
