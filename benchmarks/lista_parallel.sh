#!/usr/bin/env bash
# Run the LISTA benchmark as ten single-threaded processes in parallel (ALISTA;
# LISTA-CPSS; supervised LISTA; the other models; LAMP-BG; the unsupervised KKT-loss
# LISTA on LISTA's budget and with 6 epochs per stage; longer reruns of LISTA and ALISTA),
# then merge into
# benchmarks/results/lista.json. Each process trains on ONE thread (OMP_NUM_THREADS=1):
# the summed "train cpu s" column is the single-core training cost, independent of
# how busy the machine was; "train s" is wall time.
# Usage: benchmarks/lista_parallel.sh [outdir]
set -u
OUT=${1:-benchmarks/results}
PARTS=$OUT/lista_parts
mkdir -p "$PARTS"
run() {  # name, models...
  local name=$1; shift
  OMP_NUM_THREADS=1 python benchmarks/lista.py --no-progress --models "$@" \
    --out "$PARTS" --name "lista_$name" > "$PARTS/log_$name.txt" 2>&1 &
}
run alista ALISTA
run cpss LISTA-CPSS
run lista LISTA --no-kkt
run others LISTA-CP UnrolledFISTA ADMM-Net LAMP
run lampbg LAMP-BG
# longer reruns (more epochs per stage, same data and seeds): rows tagged [N ep/stage]
run long_lista LISTA --no-kkt --snr inf --stage-epochs 6
run long_alista_inf ALISTA --snr inf --stage-epochs 9
run long_alista_40 ALISTA --snr 40 --stage-epochs 9
# the KKT-loss LISTA (noiseless, no ground truth) with the benchmark's lam (0.1) and the
# default residual step t = 10/||A||^2 and loss mean(|r|) (config kkt_step, kkt_power),
# on LISTA's budget and, next to the supervised long run, with 6 epochs per stage
kkt() {  # name, extra options
  local name=$1; shift
  OMP_NUM_THREADS=1 python benchmarks/lista.py --no-progress --kkt-only --models LISTA --snr inf \
    "$@" --out "$PARTS" --name "lista_$name" > "$PARTS/log_$name.txt" 2>&1 &
}
kkt kkt01
kkt long_kkt --stage-epochs 6
wait
python benchmarks/lista.py --out "$OUT" --name lista --merge "$PARTS"/lista_*.json
