#!/bin/sh
# RUN_SCRIPT of the TOPAS example: sh run_topas.sh <task index>
# Each task unpacks this folder, writes its seed, threads and Geant4 data folder into its copy
# of water_phantom.txt (SEED_PARAMETER_FILES), then runs this in it. TOPAS writes its scorer
# files here, where the campaign collects them (OUTPUT_FILE_PATTERNS).
set -e
echo "task $1: TOPAS with seed ${SIM_SEED:-from water_phantom.txt}, ${TOPAS_THREADS:-1} thread(s)"
exec topas water_phantom.txt
