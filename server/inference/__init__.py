"""Running frames on engines: the scheduler (fair lanes, optional micro-batching), stacking
the recurrent states of a batch, and compiling engines for new stream shapes."""
