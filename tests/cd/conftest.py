from cd_fixtures import tiny_backbone  # noqa: F401  (the fixture, for every test here)
