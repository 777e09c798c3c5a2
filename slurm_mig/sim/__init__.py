"""The GPU simulator, a guest (docs/design.md, docs/simulator.md): the simulated driver, its
backend and a pynvml look-alike.  No production module imports it."""
