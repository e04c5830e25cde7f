"""What the tests share: fakes, the fake Dub, real processes, ledgers on every backend."""
