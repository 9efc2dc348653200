"""Coverage-guided fuzzing harnesses (atheris) for Twitcher's parsers and rewriters; run by ``make fuzz`` (fuzz/run.py)."""
