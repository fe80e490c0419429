"""One-line command-line errors, shared by every entry point (byol_jax.main, .bench, .embed, theory.main).

ml_collections reports an unknown `--config.<key>` with a 30-line traceback (an AttributeError from inside
absl's parser, raised while the module is imported when --config is not given, because the default config
is parsed where the flag is defined), and absl reports a value of the wrong type in two lines with exit
status 1. Here every such problem is one line, `error: <problem and fix>`, with exit status 2:

  cli.define_config_file(DEFAULT_CONFIG, 'Config file.')   # instead of config_flags.DEFINE_config_file
  ...
  app.run(main, flags_parser=cli.parse_flags)
"""
from __future__ import annotations

import difflib
import importlib.util
import os
import re
import sys

import ml_collections
from absl import flags
from ml_collections import config_flags
from ml_collections.config_flags import config_path

EXIT_STATUS = 2
_defined: dict = {}  # name -> (default config file, problem found at definition or None)

_ARTICLE_TYPE = {int: 'an int', float: 'a float', bool: 'a bool (true or false)', str: 'a string',
                 tuple: 'a tuple, e.g. "(1, 2)"', list: 'a list', ml_collections.ConfigDict: 'a dict'}


def fail(message: str):
  """Prints `error: message` on one line to stderr and exits with status 2."""
  print('error: ' + ' '.join(message.split()), file=sys.stderr)
  sys.exit(EXIT_STATUS)


def _flag_args(argv: list[str]) -> list[str]:
  """argv without the program name and without what follows '--' (absl stops parsing there)."""
  args = list(argv[1:])
  return args[:args.index('--')] if '--' in args else args


def config_file_arg(argv: list[str], name: str = 'config') -> str | None:
  """The value of --config (`--config=x` or `--config x`; the last one wins, as in absl), or None."""
  args, value = _flag_args(argv), None
  for i, arg in enumerate(args):
    m = re.match(rf'^--?{name}(=|$)', arg)
    if m:
      value = arg.split('=', 1)[1] if m.group(1) else (args[i + 1] if i + 1 < len(args) else None)
  return value


def override_paths(argv: list[str], name: str = 'config') -> list[str]:
  """Dotted keys of the --config.<key>[=v] and --noconfig.<key> overrides in argv, as ml_collections reads them."""
  return [arg.split('=', 1)[0].split('.', 1)[1] for arg in _flag_args(argv) if re.match(rf'^--?(no)?{name}\.', arg)]


def _keys(node, prefix: str = '') -> list[str]:
  """Every dotted key under a ConfigDict, groups and leaves."""
  out = []
  for k in node.keys():
    out.append(prefix + k)
    if isinstance(node[k], ml_collections.ConfigDict):
      out += _keys(node[k], f'{prefix}{k}.')
  return out


def unknown_key_message(config, path: str, name: str = 'config') -> str | None:
  """None if `path` ('train.steps') names a key of `config`, else one line naming it and a fix."""
  parts = path.split('.')
  node = config
  for i, part in enumerate(parts):
    done = '.'.join(parts[:i])
    if '[' in part:  # an element of a list field: ml_collections checks those itself
      return None
    if not isinstance(node, ml_collections.ConfigDict):
      return f"config key {done!r} is a single value, not a group of keys; use --{name}.{done}=<value>"
    if part in node:
      node = node[part]
      continue
    where = f'{done}.' if done else ''
    if not list(node.keys()):
      return (f"unknown config key {path!r}: {done} is empty in this config; set it whole, "
              f"e.g. --{name}.{done}=\"{{'{part}': ...}}\"")
    # --config.steps -> train.steps: the same leaf name elsewhere is the likeliest intent.
    same_leaf = [k for k in _keys(config) if k.split('.')[-1] == parts[-1] and k != path]
    close = difflib.get_close_matches(part, list(node.keys()), n=1)
    if same_leaf:
      hint = ' or '.join(repr(k) for k in same_leaf[:3])
    elif close:
      hint = repr(where + '.'.join([close[0]] + parts[i + 1:]))
    else:
      keys = ', '.join(node.keys())
      return f"unknown config key {path!r} ({'keys of ' + done if done else 'top-level keys'}: {keys})"
    return f'unknown config key {path!r} (did you mean {hint}?)'
  return None


def _load(path_arg: str, name: str):
  """The config a --config value ('file.py' or 'file.py:args') names, loaded as ml_collections loads it."""
  file, *args = path_arg.split(':', 1)
  spec = importlib.util.spec_from_file_location(f'{name}_config_checked', file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(*args)


def check_overrides(argv: list[str], default: str | None, name: str = 'config') -> str | None:
  """The first problem with argv's config file or its overrides, as one line, or None."""
  given, paths = config_file_arg(argv, name), override_paths(argv, name)
  if given is None and default is None:
    return f'--{name}.{paths[0]} needs a config file to override: add --{name}=<file>' if paths else None
  if given is not None and not os.path.isfile(given.split(':', 1)[0]):
    return (f'config file {given.split(":", 1)[0]!r} not found (--{name}={given}); '
            'give the path of a .py file with get_config()')
  if not paths:
    return None
  try:
    config = _load(given or default, name)
  except Exception:  # pylint: disable=broad-except
    return None  # a config file that fails to load: ml_collections reports it (parse_flags makes it one line)
  for path in paths:
    problem = unknown_key_message(config, path, name)
    if problem:
      return problem
  return None


def define_config_file(default: str | None, help_string: str, name: str = 'config') -> flags.FlagHolder:
  """config_flags.DEFINE_config_file (locked config) whose bad overrides `parse_flags` reports in one line.

  ml_collections parses the default config, overrides included, right here when --config is not given,
  so an unknown key would raise while the module is imported; such a problem is found first and kept for
  `parse_flags`, and the flag is defined without the overrides.
  """
  problem = check_overrides(sys.argv, default, name)
  _defined[name] = (default, problem)
  return config_flags.DEFINE_config_file(name, default, help_string, lock_config=True,
                                         sys_argv=sys.argv[:1] if problem else None)


def _type_message(message: str, argv: list[str]) -> str | None:
  """'flag --config.train.steps=abc: invalid literal ...' -> '--config.train.steps=abc: train.steps takes an int'."""
  for name, (default, _) in _defined.items():
    m = re.match(rf'^flag --(?:no)?{name}\.([^=\s]+)=(.*?): (.*)$', message, re.S)
    if not m:
      continue
    path, value, reason = m.groups()
    try:
      config = _load(config_file_arg(argv, name) or default, name)
      field_type = config_path.get_type(path, config)
    except Exception:  # pylint: disable=broad-except
      return None
    if field_type in (int, float, bool):  # the reason only repeats the type
      return f'--{name}.{path}={value}: {path} takes {_ARTICLE_TYPE[field_type]}, not {value!r}'
    article = _ARTICLE_TYPE.get(field_type, getattr(field_type, '__name__', str(field_type)))
    return f'--{name}.{path}={value}: {path} takes {article} ({_one_line(reason)})'
  return None


def _one_line(message: str) -> str:
  """The first and the last line of a multi-line message (a config file's traceback: where and what)."""
  lines = [l.strip() for l in message.strip().splitlines() if l.strip()]
  return ' '.join(lines[:1] + lines[1:][-1:])


def parse_flags(argv: list[str]) -> list[str]:
  """`flags_parser` for app.run: absl's parsing, with every problem as one line and exit status 2."""
  for _, problem in _defined.values():
    if problem:
      fail(problem)
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    message = str(e)
    fail(_type_message(message, argv) or _one_line(message))
