"""The scenarios of issue 8, each a function of a :class:`bench.run.Run`, in the order a run plays them."""
