"""pixelbus package."""
