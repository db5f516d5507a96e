"""The real service process: crashes, races, restarts and the admin commands."""
