"""Values that more than one layer trades in and no edge owns: the merge key (``keys``), which the core batches by
and the cloud client calls with, and what the API says about jobs (``jobs``): the job batch-create created and
what a later read of it told. Plain data, no I/O."""
