"""Replacing one section of benchmarks/RESULTS.md (the benchmarks' one writer)."""
import pathlib
import re


def write_section(path: pathlib.Path, text: str,
                  title: str = "CPU-scale reproduction") -> None:
  """Replaces the section whose heading starts `## {title}` (or appends)."""
  old = path.read_text() if path.exists() else "# Benchmark results\n"
  pattern = re.compile(rf"## {re.escape(title)}[^\n]*\n.*?(?=\n## |\Z)",
                       re.S)
  new = (pattern.sub(text.strip() + "\n", old) if pattern.search(old)
         else old.rstrip() + "\n\n" + text.strip() + "\n")
  tmp = path.with_suffix(".tmp")
  tmp.write_text(new)
  tmp.replace(path)
