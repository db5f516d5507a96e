"""Model conversions and exports (export/, training's converters), `facerec models` and the
Triton repository."""
