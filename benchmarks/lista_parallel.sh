#!/usr/bin/env bash
# Run the LISTA benchmark as one single-threaded process per (model, SNR), in parallel,
# then merge into benchmarks/results/lista.json. Each process trains on ONE core
# (OMP_NUM_THREADS=1), so the summed "train cpu s" is the single-core training cost.
# Usage: benchmarks/lista_parallel.sh [outdir]
set -u
OUT=${1:-benchmarks/results}
PARTS=$OUT/lista_parts
mkdir -p "$PARTS"
MODELS="LISTA LISTA-CP LISTA-CPSS ALISTA UnrolledFISTA ADMM-Net LAMP"
for snr in inf 40; do
  for m in $MODELS; do
    OMP_NUM_THREADS=1 python benchmarks/lista.py --no-progress --no-kkt --models "$m" \
      --snr "$snr" --out "$PARTS" --name "lista_${m}_${snr}" > "$PARTS/log_${m}_${snr}.txt" 2>&1 &
  done
done
OMP_NUM_THREADS=1 python benchmarks/lista.py --no-progress --kkt-only --models LISTA --snr inf \
  --out "$PARTS" --name lista_kkt_inf > "$PARTS/log_kkt_inf.txt" 2>&1 &
wait
python benchmarks/lista.py --out "$OUT" --name lista --merge "$PARTS"/lista_*.json
