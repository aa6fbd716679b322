"""Render docs/benchmarks.md from the JSON files the issue-13 benchmarks wrote (never type a figure by hand).

  python benchmarks/render_benchmarks.py            # rewrites docs/benchmarks.md

Reads benchmarks/results/train_step_cpu_{a,b,c}[_system].json (benchmarks/train_step.py; `_system`: run with
`--host-malloc system`), equal_loss_cpu.json (benchmarks/equal_loss.py), epoch_cpu[_system].json (benchmarks/epoch.py), gpu_step*.json (benchmarks/gpu_benchmarks.py),
profile_step_*.json (benchmarks/profile_step.py), ablation_*.json (benchmarks/step_ablation.py)
and the last recorded GPU decoding run (decode_h100.json). Every section prints the command, git commit, date,
machine and versions stored in its JSON; a missing JSON is reported as not measured.
"""
from __future__ import annotations

import os


from report import ROOT, each_result, load, table  # noqa: E402

OUT = os.path.join(ROOT, "docs", "benchmarks.md")


def machine_line(d: dict) -> str:
  m, v = d.get("machine", {}), d.get("versions", {})
  cpu = m.get("cpu", {})
  flags = ", ".join(f for f in ("avx512f", "avx512_bf16", "amx_bf16") if cpu.get(f)) or "no AVX-512"
  versions = ", ".join(f"{k} {v[k]}" for k in ("jax", "flax", "torch", "transformers") if k in v)
  return f"{cpu.get('model', '?')}, {cpu.get('cpus', '?')} cpus ({flags}); {m.get('device', '')}; {versions}"


def provenance(d: dict) -> list[str]:
  steal = f", CPU time taken by the hypervisor {100 * d['cpu_steal_share']:.1f}%" if "cpu_steal_share" in d else ""
  return [f"Command: `{d['command']}`  ", f"Commit {d.get('git_commit', '?')}, {d.get('date_utc', '?')}, load "
          f"average at start {', '.join(f'{x:.2f}' for x in d.get('load_average_start', []))}{steal}  ",
          f"Machine: {machine_line(d)}", ""]


ALLOCATORS = (("", "glibc keeps freed blocks mapped (`--host-malloc keep`, what xlm_jax runs do by default; it "
                    "applies to transformers too)"),
              ("_system", "glibc defaults (`--host-malloc system`, for both frameworks)"))
# result files from a CPU without AVX-512 BF16 (bf16 emulated for both frameworks), kept beside the others: a ratio
# belongs to the machine it was measured on
MACHINES = (("", "a CPU with AVX-512 BF16"), ("_avx2", "a CPU with AVX2 only (no AVX-512 BF16: bf16 is emulated)"))


def host_malloc_note(d: dict) -> str:
  return f"host_malloc={d.get('host_malloc', 'system (not recorded: before the option existed)')}"


def allocator_contrast() -> str:
  """Where the two frameworks share a process and where they do not, from the results' own records."""
  step, epoch = load("train_step_cpu_a.json"), load("epoch_cpu.json")
  if not step or not epoch:
    return ""
  if step.get("processes") and epoch.get("processes"):
    return (" Both benchmarks give each framework its own process (train step: "
            f"{step['processes']}; epoch: {epoch['processes']}), so neither framework's allocations slow the "
            "other's; each table's notes say how its runs were made.")
  if epoch.get("processes"):
    return (" The train-step runs hold all four settings in one process, so under kept mapping the two frameworks "
            "share one glibc heap; the epoch runs below give each framework its own process "
            f"({epoch['processes']}).")
  return (" Both benchmarks hold the two frameworks in one process, so under kept mapping they share one glibc "
          "heap.")


def section_steps(lines: list[str]) -> None:
  lines += ["## Train step beside transformers (CPU)", "",
            "Same initial weights (ours converted into `XLMWithLMHeadModel` with `xlm_jax.interop`), same batches "
            "and masked positions, settings alternating in one run, medians (min-max) of the timed rounds in ms per "
            "step. Ratio: our faster setting against the faster transformers setting of the same run. MFU: our model "
            "FLOPs (what our step computes: the vocabulary projection, and the last layer but for its keys and values, only at the predicted positions) per second over the 2048^3 matmul peak "
            "measured in the same run: bf16 with float32 accumulation, or float32 where that is faster (a CPU "
            "without AVX-512 BF16 emulates bf16, and an MFU over the emulated peak would flatter us; results from "
            "before float32 was measured use the bf16 peak).", "",
            "The C allocator setting is the process's, so both frameworks always run under the same one, and each "
            "setting has its own table. Keeping freed blocks mapped is what our runs use; it speeds transformers up "
            "too (its CPU allocator goes through the same `posix_memalign`)." + allocator_contrast(), ""]
  for machine, machine_title in MACHINES:
    for suffix, title in ALLOCATORS:
      if machine and not any(load(f"train_step_cpu{machine}_{size}{suffix}.json") for size in "abc"):
        continue
      lines += [f"### {machine_title[0].upper() + machine_title[1:]}; allocator: {title}", ""]
      steps_table(lines, machine, suffix)


def peak_cell(d: dict) -> str:
  """The matmul peaks a train-step result measured, and which one its MFU is over."""
  bf16 = f"bf16 {d['peak_bf16_gflops']['median']:.0f}"
  if "mfu_peak" not in d:   # before float32 was measured too: MFU over the bf16 peak
    return bf16
  return f"{bf16}, f32 {d['peak_f32_gflops']['median']:.0f} (MFU over {d['mfu_peak']['dtype']})"


def steps_table(lines: list[str], machine: str, suffix: str) -> None:
  rows, found = [], []
  for size in "abc":
    d = load(f"train_step_cpu{machine}_{size}{suffix}.json")
    if not d:
      rows.append([f"({size})", "not measured", "", "", "", "", "", "", ""])
      continue
    found.append(d)
    s, x = d["settings"], d.get("summary", {})
    dropped = d.get("dropped", {})
    cell = lambda k: (f"{s[k]['median_ms']:,.0f} ({s[k]['min_ms']:,.0f}-{s[k]['max_ms']:,.0f})" if k in s else
                      f"dropped after warm-up ({dropped[k]['warmup_ms'][-1]:,.0f} ms/step)" if k in dropped else "-")
    m = d["model"]
    rows.append([f"({size}) d={m['emb_dim']}, {m['n_layers']} layers", cell("torch-fp32"), cell("torch-bf16"),
                 cell("ours-f32"), cell("ours-bf16"),
                 f"**{x['ratio']:.2f}x** vs {x['torch_setting']} (target {d['target_ratio']}x: "
                 f"{'met' if x['meets_ratio_target'] else 'NOT met'})" if x else "-",
                 f"{100 * x['mfu']:.0f}%" + (f" (target 60%: {'met' if x['meets_mfu_target'] else 'NOT met'})"
                                             if "meets_mfu_target" in x else "") if x else "-",
                 peak_cell(d),
                 " / ".join(f"{s[k]['gflops_per_s']:.0f}" for k in ("torch-bf16", "ours-bf16") if k in s)])
  lines += table(["size", "transformers fp32", "transformers bf16 autocast", "xlm_jax f32", "xlm_jax bf16",
                  "xlm_jax / faster transformers", "MFU (ours)", "matmul peak GFLOP/s", "GFLOP/s torch-bf16 / ours-bf16"],
                 rows) + [""]
  for d in found:
    x = d.get("summary")
    if x:
      lines.append(f"`case={d['size']} ours_ms={x['ours_ms']:.0f} torch_ms={x['torch_ms']:.0f} "
                   f"torch_setting={x['torch_setting']} ratio={x['ratio']:.2f} mfu={x['mfu']:.2f}`  ")
  lines.append("")
  for d in found:
    lines += [f"Size ({d['size']}), {host_malloc_note(d)}: {d['reps']} timed rounds after {d['warmup']} warm-up, "
              f"{d['steps_per_rep']} step(s) "
              f"per setting per round; model FLOPs per step ours {d['settings'].get('ours-bf16', d['settings'].get('ours-f32', {})).get('model_gflop_per_step', 0):.1f} "
              f"GFLOP, transformers {d['settings'].get('torch-bf16', d['settings'].get('torch-fp32', {})).get('model_gflop_per_step', 0):.1f} GFLOP. "
              f"Processes: {d.get('processes', 'both frameworks in one process (before each got its own)')}.  "]
    lines += [f"Dropped: {k}, {v['why']}.  " for k, v in d.get("dropped", {}).items()]
    lines += provenance(d)


def section_equal_loss(lines: list[str]) -> None:
  d = load("equal_loss_cpu.json")
  lines += ["## Equal loss behaviour", ""]
  if not d:
    lines += ["Not measured yet (`benchmarks/equal_loss.py`).", ""]
    return
  lines += [f"{d['steps']} steps from the same weights on the same Multi30k batches ({d['rows']} rows, en / fr / "
            f"en-fr taking turns), dropout 0, Adam lr {d['lr']}; model {d['variant']} (d={d['model']['emb_dim']}, "
            f"{d['model']['n_layers']} layers, V={d['model']['vocab']}).", ""]
  rows = [[name, f"{v[0]:.4f}", f"{v[-1]:.4f}", f"{d['max_abs_diff_to_torch_fp32'].get(name, 0.0):.4f}"]
          for name, v in d["losses"].items()]
  lines += table(["run", "loss at step 1", f"loss at step {d['steps']}", "max abs difference to transformers fp32"],
                 rows) + [""]
  lines += [f"Verdict: ours-f32 {'agrees' if d['passed']['ours-f32'] else 'DIFFERS'} (within 1e-2); ours-bf16 "
            f"{'agrees within bf16 noise' if d['passed']['ours-bf16'] else 'DIFFERS beyond bf16 noise'} (at most twice "
            "transformers' own bf16-autocast deviation plus 0.02).", ""]
  if d.get("plot"):
    lines += [f"![losses]({os.path.relpath(os.path.join(ROOT, d['plot']), os.path.join(ROOT, 'docs'))})", ""]
  lines += provenance(d)


def section_epoch(lines: list[str]) -> None:
  lines += ["## One budget of MLM+TLM target tokens on Multi30k en-fr", ""]
  for machine, machine_title in MACHINES:
    for suffix, title in ALLOCATORS:
      if machine and not load(f"epoch_cpu{machine}{suffix}.json"):
        continue
      lines += [f"### {machine_title[0].upper() + machine_title[1:]}; allocator: {title}", ""]
      epoch_table(lines, machine + suffix)


def epoch_table(lines: list[str], suffix: str) -> None:
  d = load(f"epoch_cpu{suffix}.json")
  if not d:
    lines += ["Not measured yet (`benchmarks/epoch.py`).", ""]
    return
  o, t, m = d["ours"], d["transformers"], d["model"]
  lines += [f"Model {d['variant']} (d={m['emb_dim']}, {m['n_layers']} layers, V={m['vocab']}, dropout {m['dropout']}); "
            f"each side trains on {d['budget_targets']:,} predicted tokens (15% of real tokens).", ""]
  lines += table(["", "seconds", "target tokens", "updates", "target tokens/s", "real-token share of the batches"], [
      [f"xlm_jax ({m['dtype']}, packed {o['batch_rows']}x{o['row_length']} rows, objectives {'+'.join(o['objectives'])})",
       f"{o['seconds']:.1f}", o["targets"], o["steps"], f"{o['targets_per_s']:.0f}", f"{o['non_pad_share']:.1%}"],
      [f"transformers ({t['setting']}, padded to the longest row, rows per batch "
       f"{', '.join(f'{k} {v}' for k, v in t['rows_per_batch'].items())})", f"{t['seconds']:.1f}", t["targets"],
       t["steps"], f"{t['targets_per_s']:.0f}",
       ", ".join(f"{k} {v:.1%}" for k, v in t["non_pad_share_by_stream"].items())]]) + [""]
  probes = [f"{side} {', '.join(f'{k} {v:.1f} s' for k, v in probe.items())}"
            for side, probe in (("ours", o.get("dtype_probe_seconds")), ("transformers", t.get("probe_seconds")))
            if probe]
  if probes:
    lines += [f"Each side trains in its faster setting on this machine, picked by a short probe of both on 900 target "
              f"tokens ({'; '.join(probes)}).", ""]
  lines += [f"Ratio **{d['ratio']:.2f}x** (target {d['target_ratio']}x: {'met' if d['meets_target'] else 'NOT met'}); "
            f"our one compilation ({o['compile_s']:.1f} s) is not in the time. Processes: "
            f"{d.get('processes', 'both frameworks in one')}.", ""]
  lines += provenance(d)


def section_gpu(lines: list[str]) -> None:
  lines += ["## GPU", ""]
  runs = each_result("gpu_step*.json")
  if not runs:
    lines += ["No GPU has been lent to a session since `benchmarks/gpu_benchmarks.py` was written, so the train-step "
              "MFU of `xlm_mlm_tlm_xnli15_1024` on a GPU is not measured yet; run "
              "`python benchmarks/gpu_benchmarks.py --out benchmarks/results/gpu_step.json --xlm-repo PATH "
              "--decode-out benchmarks/results/decode_gpu.json` on one and re-render.", ""]
  for name, d in runs:
    vendor = f"{100 * d['mfu_vs_vendor']:.1f}% of the vendor dense bf16 peak ({d['vendor_bf16_peak_tflops']:.0f} " \
             f"TFLOP/s)" if d.get("mfu_vs_vendor") else "no vendor peak known"
    lines += [f"`{name}` ({d['device_kind']}, batch {d['batch']['rows']}x{d['batch']['length']}): ours "
              f"{d['settings']['ours-bf16']['median_ms']:.1f} ms/step; MFU {vendor}; "
              f"{100 * d['mfu_vs_measured']:.1f}% of the measured bf16 matmul peak "
              f"({d['measured_bf16_peak_tflops']:.0f} TFLOP/s)."] + provenance(d)
  d = load("decode_h100.json")
  if d:
    beam4 = [r for r in d["rows"] if r.get("beam") == 4 and r.get("implementation") == "xlm_jax"]
    best = max(beam4, key=lambda r: r.get("vs_xlm_same_run") or 0) if beam4 else None
    if best:
      lines += [f"Last recorded GPU decoding run (`benchmarks/results/decode_h100.json`, "
                f"jax {d['machine'].get('jax')}, not our pinned version): beam-4 decoding "
                f"{best['sentences_per_s']:,.0f} sentences/s, **{best['vs_xlm_same_run']:.1f}x** the original XLM "
                f"code in the same run ({best['dtype']}).", ""]


def section_profile(lines: list[str], top: int = 12) -> None:
  """Where our step's time goes (benchmarks/profile_step.py): the operation families and the costliest result
  shapes, per traced run."""
  runs = each_result("profile_step_*.json")
  if not runs:
    return
  lines += ["## Where our step spends its time", "",
            "A jax.profiler trace of our step (`benchmarks/profile_step.py`), each XLA operation's time summed by "
            "family and by result shape. XLA:CPU runs independent operations concurrently, so the sums can exceed "
            "the wall time: they say where the cores are busy, not a partition of the step. The rate of a row "
            "with matmuls is their FLOPs over that summed time (a thunk's time includes waiting for a core).", ""]
  for name, d in runs:
    lines += [f"### `{name}`: size ({d['size']}), {d['dtype']}, {d['wall_ms_untraced']:,.0f} ms/step untraced "
              f"({d['wall_ms_traced']:,.0f} traced), operations sum to {d['thunk_ms_per_step']:,.0f} ms/step"
              + (f", matmuls {d['matmul_gflop_per_step']:.1f} GFLOP per step" if "matmul_gflop_per_step" in d else ""),
              ""]
    rate = lambda x: f"{x['matmul_gflops_per_s']:.0f}" if x.get("matmul_gflops_per_s") else ""
    lines += table(["family", "result shape", "operations", "ms per step", "matmul GFLOP/s"],
                   [[f"`{x['family']}`", f"`{x['shape']}`", str(x["instructions"]), f"{x['ms_per_step']:.1f}",
                     rate(x)] for x in d["by_shape"][:top]])
    lines += [""] + provenance(d)


def section_ablations(lines: list[str]) -> None:
  """What each of our speed devices is worth (benchmarks/step_ablation.py): the step with and without it."""
  runs = each_result("ablation_*.json")
  if not runs:
    return
  lines += ["## What a speed device is worth", "",
            "Our step with one device and with the plain code it replaced, compiled side by side and alternating "
            "in one process (`benchmarks/step_ablation.py`); medians (min-max) in ms per step.", ""]
  lines += table(["device", "size, dtype", "with", "without", "speedup"],
                 [[f"`{d['ablation']}`", f"({d['size']}), {d['dtype']}",
                   f"{d['settings']['with']['median_ms']:,.0f} ({d['settings']['with']['min_ms']:,.0f}-"
                   f"{d['settings']['with']['max_ms']:,.0f})",
                   f"{d['settings']['ablated']['median_ms']:,.0f} ({d['settings']['ablated']['min_ms']:,.0f}-"
                   f"{d['settings']['ablated']['max_ms']:,.0f})", f"{d['speedup']:.3f}x"] for _, d in runs])
  lines.append("")
  for _, d in runs:
    lines += provenance(d)


def main() -> None:
  lines = ["# Benchmarks: xlm_jax beside transformers' XLM", "",
           "Generated by `python benchmarks/render_benchmarks.py` from the JSON files in `benchmarks/results/`; do not "
           "edit by hand. Ratios are only meaningful inside one run on one machine (separate runs differ by about "
           "±7%; on CPUs without AVX-512 BF16, bf16 is emulated for both frameworks).", ""]
  section_steps(lines)
  section_equal_loss(lines)
  section_epoch(lines)
  section_profile(lines)
  section_ablations(lines)
  section_gpu(lines)
  with open(OUT, "w") as f:
    f.write("\n".join(lines).rstrip() + "\n")
  print(f"wrote {OUT}")


if __name__ == "__main__":
  main()
