import ast
import os
import subprocess
import sys
import tempfile
from typing import Iterator, List, Set, Tuple, Union

import setuptools
from setuptools.command.build_py import build_py

Function = Union[ast.FunctionDef, ast.AsyncFunctionDef]


def long_description() -> str:
    with open('README.md', 'r', encoding='utf-8') as file:
        return file.read()


def functions(node: ast.AST, prefix: str = '') -> Iterator[Tuple[str, Function]]:
    """(qualified name, node) of the functions and methods that a stub can declare: those of
    the module and of its classes, not those nested in functions."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.ClassDef):
            yield from functions(child, prefix + child.name + '.')
        elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield prefix + child.name, child


def yields(function: Function) -> bool:
    """Whether `yield` is in the function's own body (not in a function nested in it)."""
    pending: List[ast.AST] = list(function.body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.Yield, ast.YieldFrom)):
            return True
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef,
                                 ast.Lambda)):
            pending.extend(ast.iter_child_nodes(node))
    return False


def async_generators(source: str) -> Set[str]:
    return {name for name, function in functions(ast.parse(source))
            if isinstance(function, ast.AsyncFunctionDef) and yields(function)}


def generators_not_async(stub: str, generators: Set[str]) -> str:
    """The stub with `async` dropped from the async generator functions. stubgen writes them
    as `async def f() -> AsyncIterator[bytes]`, which declares a coroutine that returns an
    iterator; calling an async generator function returns the iterator itself, which is what
    `def f() -> AsyncIterator[bytes]` declares."""
    lines = stub.split('\n')
    for name, function in functions(ast.parse(stub)):
        if name in generators and isinstance(function, ast.AsyncFunctionDef):
            line, column = function.lineno - 1, function.col_offset
            if lines[line][column:column + 6] != 'async ':
                raise ValueError('Unexpected stub line for %s: %r' % (name, lines[line]))
            lines[line] = lines[line][:column] + lines[line][column + 6:]
    return '\n'.join(lines)


def bound_names(tree: ast.Module) -> Set[str]:
    """The names a module binds at its top level."""
    names: Set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split('.')[0] for alias in node.names)
    return names


def conditionally_defined(source: ast.Module) -> Set[str]:
    """Names the module defines in a top-level `if` (one per Python version, say)."""
    return {node.name if isinstance(node, ast.ClassDef) else node.id
            for statement in source.body if isinstance(statement, ast.If)
            for node in ast.walk(statement)
            if isinstance(node, ast.ClassDef) or
            (isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store))}


def with_untranslated_names(stub: str, source: str) -> str:
    """The stub with `Incomplete` (Any, to a checker) for what stubgen cannot write: it drops
    or copies without its condition a name defined in a top-level `if`, and drops a private
    type alias (and any alias written with quoted forward references) that the stub uses."""
    source_tree = ast.parse(source)
    conditional = conditionally_defined(source_tree)
    aliases = {target.id for node in source_tree.body if isinstance(node, ast.Assign)
               for target in node.targets if isinstance(target, ast.Name)}
    tree = ast.parse(stub)
    lines = stub.split('\n')
    replaced = set()
    for node in reversed(tree.body):
        if isinstance(node, ast.ClassDef) and node.name in conditional:
            first = node.lineno - 1 - len(node.decorator_list)
            lines[first:node.end_lineno] = ['%s = Incomplete' % node.name]
            replaced.add(node.name)
    used = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    missing = sorted(name for name in used - bound_names(tree)
                     if name in aliases or name in conditional)
    if not (replaced or missing):
        return stub
    if 'from _typeshed import Incomplete' not in lines:
        lines.insert(0, 'from _typeshed import Incomplete')
    return '\n'.join(lines).rstrip('\n') + '\n' + \
        ''.join('%s = Incomplete\n' % name for name in missing)


class build_py_with_stubs(build_py):
    """Also builds a PEP 561 stub-only package, `<module>-stubs/__init__.pyi`, for each module.

    PEP 561 gives a single-module distribution no way to say it is typed (`py.typed` marks
    packages only), so type checkers would ignore the annotations in `lowhaio.py`; they do read
    a `lowhaio-stubs` package installed beside it. The stubs are generated here from the
    annotated modules by mypy's stubgen, so they cannot drift from them; CI checks them against
    the modules with mypy's stubtest (tests/test_typing.py).
    """

    def run(self) -> None:
        super().run()
        if not getattr(self, 'editable_mode', False):  # an editable install reads the sources
            self.write_stubs()

    def write_stubs(self) -> None:
        with tempfile.TemporaryDirectory() as generated:
            # mypy is compiled (mypyc): its modules cannot be run with -m
            stubgen = 'import sys; from mypy.stubgen import main; main(sys.argv[1:])'
            subprocess.run(
                [sys.executable, '-c', stubgen, '--include-docstrings', '--quiet',
                 '-o', generated, *(module + '.py' for module in self.py_modules)],
                check=True)
            for module in self.py_modules:
                with open(module + '.py', encoding='utf-8') as file:
                    source = file.read()
                with open(os.path.join(generated, module + '.pyi'), encoding='utf-8') as file:
                    stub = with_untranslated_names(
                        generators_not_async(file.read(), async_generators(source)), source)
                stubs_dir = os.path.join(self.build_lib, module + '-stubs')
                os.makedirs(stubs_dir, exist_ok=True)
                with open(os.path.join(stubs_dir, '__init__.pyi'), 'w', encoding='utf-8') as file:
                    file.write(stub)

    def get_outputs(self, include_bytecode: bool = True) -> List[str]:
        return super().get_outputs(include_bytecode) + [
            os.path.join(self.build_lib, module + '-stubs', '__init__.pyi')
            for module in self.py_modules or ()]


setuptools.setup(
    name='lowhaio',
    version='0.1.0',
    author='lowhaio developers',
    description='A lean, streaming-first asyncio HTTP/1.1 client',
    long_description=long_description(),
    long_description_content_type='text/markdown',
    python_requires='>=3.9',
    py_modules=[
        'lowhaio',
        'lowhaio_redirect',
        'lowhaio_retry',
        'lowhaio_chunked',
        'lowhaio_aws_sigv4',
        'lowhaio_aws_sigv4_unsigned_payload',
        'lowhaio_multipart',
        'lowhaio_json',
        'lowhaio_sse',
        'lowhaio_breaker',
        'lowhaio_defaults',
        'lowhaio_decompress',
        'lowhaio_cookies',
        'lowhaio_auth',
        'lowhaio_cli',
        'lowhaio_proxy',
        'lowhaio_httpx',
        'lowhaio_asgi',
    ],
    install_requires=[
        'aiodnsresolver>=0.0.157',
    ],
    extras_require={
        # lowhaio_json: orjson to encode and decode faster, msgspec for read_json(as_type=...)
        'json': ['orjson>=3.9', 'msgspec>=0.18'],
        # br and zstd for lowhaio_decompress (gzip and deflate need nothing). brotli 1.2 is the
        # first that can limit the output of one call, which bounded decoding needs. isal
        # decodes gzip and deflate twice as fast as zlib, where ISA-L has its fast code (x86-64
        # and 64-bit ARM); elsewhere zlib is as good and needs no build
        'compression': [
            'brotli>=1.2',
            'zstandard>=0.18',
            'isal>=1.6; platform_machine == "x86_64" or platform_machine == "AMD64"'
            ' or platform_machine == "aarch64" or platform_machine == "arm64"',
        ],
        # The command-line client's progress bar; without it, the client works, with no bar
        'cli': ['tqdm>=4.60'],
        # lowhaio_httpx: an httpx transport
        'httpx': ['httpx>=0.25'],
        # lowhaio_asgi needs no package of its own, only an ASGI server to run it
        'asgi': ['uvicorn>=0.24'],
    },
    cmdclass={'build_py': build_py_with_stubs},
    entry_points={
        'console_scripts': ['lowhaio = lowhaio_cli:main'],
    },
    classifiers=[
        'Framework :: AsyncIO',
        'Intended Audience :: Developers',
        'Programming Language :: Python :: 3',
        'Topic :: Internet :: WWW/HTTP',
    ],
)
