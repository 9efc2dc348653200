"""Coverage-guided fuzzing harnesses (atheris) for Twitcher's parsers and rewriters: ``make fuzz``."""
