"""Lightning callbacks that steer training (EMA teachers, curricula, data mixing)."""

__all__: list[str] = []
