"""Coverage-guided fuzzing harnesses (atheris) for Twitcher's parsers and rewriters; see README.rst."""
