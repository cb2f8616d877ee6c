"""Pure status logic: observed children in, phase + conditions + reasons out. No I/O."""
