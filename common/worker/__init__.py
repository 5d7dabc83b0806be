"""What each worker task is told: the TOPAS parameter files read as TOPAS reads them
(parameters.py), the seed, threads, histories and Geant4 data folder written into them
(setup.py), and the cores a node of a VM size has (cores.py). Client-side only: nothing
here ships to nodes, and nothing here loads the merge (common/topas) or its libraries."""
