"""The node: one feature store in /dev/shm (:mod:`.store`), the MPI node context and thread pinning
(:mod:`.context`), and the plan of ranks, envs and threads for this machine (:mod:`.hardware`).

Nothing is imported here: env workers load :mod:`.store` alone, and never mpi4py.
"""
