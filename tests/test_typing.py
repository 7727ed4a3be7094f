"""Type checkers see lowhaio's types once it is installed.

lowhaio is a single-module distribution, which PEP 561 gives no `py.typed` marker, so the
wheel also carries a stub-only package per module (`lowhaio-stubs`, `lowhaio_retry-stubs`, ...),
generated from the annotated modules at build time (setup.py, `build_py_with_stubs`).

These tests build the wheel from a copy of the sources, install it into a fresh virtualenv,
and run mypy as a user would (`--python-executable` pointing at that virtualenv): on programs
that wrap `request` (which must pass) and on programs with one type error each (which must
fail with that error, at that line). They also check the stubs against the modules with mypy's
stubtest, so a stub that says something the module does not do fails here.
"""

from __future__ import annotations

import ast
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap
import zipfile
from typing import Dict, List, NamedTuple

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
MODULES = sorted(path.stem for path in REPO_ROOT.glob('lowhaio*.py'))


class Installed(NamedTuple):
    wheel: pathlib.Path
    python: pathlib.Path  # of the fresh virtualenv lowhaio is installed in
    site_packages: pathlib.Path
    work: pathlib.Path  # where user programs are written and mypy runs: no lowhaio.py there


def run(args: List[str], cwd: pathlib.Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})


@pytest.fixture(scope='module')
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = tmp_path_factory.mktemp('typing')
    # Built from a copy, so that the build leaves nothing in the working tree
    source = root / 'source'
    source.mkdir()
    for name in ['setup.py', 'pyproject.toml', 'README.md', *(m + '.py' for m in MODULES)]:
        shutil.copy(REPO_ROOT / name, source / name)
    # Without build isolation, the build uses this environment's setuptools, wheel and mypy
    # (requirements-helpers-test.txt) instead of fetching them; CI also builds with isolation
    built = run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation',
                 '-w', str(root / 'dist'), str(source)], cwd=root)
    assert built.returncode == 0, built.stdout + built.stderr
    wheel, = (root / 'dist').glob('lowhaio-*.whl')

    venv = root / 'venv'
    made = run([sys.executable, '-m', 'venv', '--without-pip', str(venv)], cwd=root)
    assert made.returncode == 0, made.stderr
    python = venv / 'bin' / 'python'
    installing = run([sys.executable, '-m', 'pip', '--python', str(python), 'install',
                      str(wheel)], cwd=root)
    assert installing.returncode == 0, installing.stdout + installing.stderr
    site_packages = pathlib.Path(run(
        [str(python), '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
        cwd=root).stdout.strip())
    work = root / 'work'
    work.mkdir()
    return Installed(wheel, python, site_packages, work)


def mypy(installed: Installed, name: str, program: str,
         python: pathlib.Path | None = None) -> subprocess.CompletedProcess[str]:
    """mypy --strict on `program`, finding packages in the virtualenv of `python`."""
    path = installed.work / name
    path.write_text(textwrap.dedent(program))
    return run([sys.executable, '-m', 'mypy', '--strict', '--no-error-summary',
                '--cache-dir', str(installed.work.parent / 'mypy-cache'),
                '--python-executable', str(python or installed.python), name],
               cwd=installed.work)


# ---------------------------------------------------------------------------------------------
# What is installed
# ---------------------------------------------------------------------------------------------

def test_the_wheel_carries_a_stub_only_package_for_every_module(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = set(wheel.namelist())
    for module in MODULES:
        assert module + '.py' in names
        assert module + '-stubs/__init__.pyi' in names
        assert (installed.site_packages / (module + '-stubs') / '__init__.pyi').is_file()


def test_the_stubs_agree_with_the_modules(installed: Installed) -> None:
    """mypy's stubtest imports each module and compares it with its installed stub: every
    name, signature and default the stub declares must exist at run time, and the reverse."""
    stubs = installed.work.parent / 'stubs'
    stubs.mkdir()
    for module in MODULES:
        # MYPYPATH is searched before anything installed, for `<module>.pyi`
        shutil.copy(installed.site_packages / (module + '-stubs') / '__init__.pyi',
                    stubs / (module + '.pyi'))
    options = ['--concise']
    # stubgen writes no PEP 800 @disjoint_base markers (which classes cannot share a subclass,
    # for narrowing), and stubtest checks them from mypy 1.18: not checked here
    if '--ignore-disjoint-bases' in run([sys.executable, '-m', 'mypy.stubtest', '--help'],
                                        cwd=installed.work).stdout:
        options.append('--ignore-disjoint-bases')
    checked = run([sys.executable, '-m', 'mypy.stubtest', *options, *MODULES],
                  cwd=installed.work, MYPYPATH=str(stubs))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def module_functions(tree: ast.AST) -> Dict[str, ast.AST]:
    """Functions of a module and methods of its classes, by qualified name."""
    found: Dict[str, ast.AST] = {}
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found[node.name] = node
        elif isinstance(node, ast.ClassDef):
            found.update({node.name + '.' + name: method
                          for name, method in module_functions(node).items()})
    return found


def is_async_generator(function: ast.AST) -> bool:
    return isinstance(function, ast.AsyncFunctionDef) and any(
        isinstance(node, (ast.Yield, ast.YieldFrom)) for statement in function.body
        if not isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
        for node in ast.walk(statement))


@pytest.mark.parametrize('module', MODULES)
def test_async_generator_functions_are_declared_returning_iterators(
        installed: Installed, module: str) -> None:
    """Calling an async generator function returns the async iterator itself: its stub must
    be `def f() -> AsyncIterator[...]`, not `async def`, which would declare a coroutine."""
    source = module_functions(ast.parse((REPO_ROOT / (module + '.py')).read_text()))
    stub = module_functions(ast.parse(
        (installed.site_packages / (module + '-stubs') / '__init__.pyi').read_text()))
    for name, function in source.items():
        if name in stub:
            declared_async = isinstance(stub[name], ast.AsyncFunctionDef)
            assert declared_async == (isinstance(function, ast.AsyncFunctionDef) and
                                      not is_async_generator(function)), name


# Public names that the stubs may leave untyped, with the reason
UNTYPED_IN_STUBS = {
    # An alias over a private class, which stubgen leaves out of the stub
    'lowhaio_multipart': {'Part'},
}


def untyped_public_names(stub: ast.Module) -> List[str]:
    """Names in a stub annotated `Incomplete`: what stubgen writes for a variable or an
    attribute it finds no annotation for, and what a type checker then takes as Any."""
    found = []
    for node in stub.body:
        scopes = [('', node)] if isinstance(node, ast.AnnAssign) else \
            [(node.name + '.', child) for child in node.body] \
            if isinstance(node, ast.ClassDef) and not node.name.startswith('_') else []
        for prefix, child in scopes:
            if isinstance(child, ast.AnnAssign) and isinstance(child.target, ast.Name) and \
                    not child.target.id.startswith('_') and \
                    ast.unparse(child.annotation) == 'Incomplete':
                found.append(prefix + child.target.id)
    return found


@pytest.mark.parametrize('module', MODULES)
def test_public_names_are_typed_in_the_stubs(installed: Installed, module: str) -> None:
    """Every public constant, and every attribute of a public class, is annotated in the
    module, so that users' checkers see its type and not Any."""
    stub = ast.parse((installed.site_packages / (module + '-stubs') / '__init__.pyi').read_text())
    assert set(untyped_public_names(stub)) == UNTYPED_IN_STUBS.get(module, set())


# ---------------------------------------------------------------------------------------------
# Programs that use lowhaio correctly type-check
# ---------------------------------------------------------------------------------------------

WRAPPING_PROGRAM = '''
    import asyncio
    from typing import Any, AsyncIterator

    from lowhaio import (BodyFunction, Headers, HttpConnectionError, Pool, Request, Response,
                         ResponseBody, buffered, empty_async_iterator, streamed)
    from lowhaio_redirect import redirectable
    from lowhaio_retry import retry


    def with_header(request: Request, name: bytes, value: bytes) -> Request:
        """A helper in lowhaio's style: wraps request, returns a function of its signature."""
        async def request_with_header(method: bytes, url: str, *, headers: Headers = (),
                                      **kwargs: Any) -> Response:
            return await request(method, url, headers=headers + ((name, value),), **kwargs)
        return request_with_header


    def counted(request: Request, counts: list[int]) -> Request:
        async def counted_request(method: bytes, url: str, **kwargs: Any) -> Response:
            counts.append(1)
            code, headers, body = await request(method, url, **kwargs)
            return code, headers, body
        return counted_request


    async def chunks(count: int, *, size: int) -> AsyncIterator[bytes]:
        for _ in range(count):
            yield b'x' * size


    async def first_chunk(body: ResponseBody) -> bytes:
        async for chunk in body:
            await body.aclose()
            return chunk
        return b''


    async def main() -> None:
        request, close = Pool(max_connections_per_host=4)
        counts: list[int] = []
        wrapped = retry(redirectable(counted(with_header(request, b'x-a', b'1'), counts)),
                        ((HttpConnectionError, (0.1, 0.2)),))
        upload: BodyFunction = chunks
        try:
            code, headers, body = await wrapped(
                b'PUT', 'http://127.0.0.1:1/', params=(('q', 'v'),),
                headers=((b'content-length', b'6'),), body=upload, body_args=(3,),
                body_kwargs=(('size', 2),))
            status: bytes = code
            names = [name for name, _ in headers]
            data: bytes = await buffered(body)
            code, _, body = await wrapped(b'POST', 'http://127.0.0.1:1/', body=streamed(b'hi'))
            code, _, body = await wrapped(b'GET', 'http://127.0.0.1:1/', body=empty_async_iterator)
            async for chunk in empty_async_iterator():
                print(chunk)
            print(status, names, data, await first_chunk(body))
            print(request.status())
        finally:
            await close()


    asyncio.run(main())
'''


def test_a_program_wrapping_request_type_checks(installed: Installed) -> None:
    checked = mypy(installed, 'wrapping.py', WRAPPING_PROGRAM)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout == ''


def readme_types_example() -> str:
    """The ```python block of README.md's "## Types" section."""
    readme = (REPO_ROOT / 'README.md').read_text()
    section = readme.split('\n## Types\n', 1)[1].split('\n## ', 1)[0]
    return section.split('```python\n', 1)[1].split('\n```', 1)[0] + '\n'


def test_the_readme_example_type_checks(installed: Installed) -> None:
    checked = mypy(installed, 'readme_example.py', readme_types_example())
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout == ''


def test_the_types_are_lowhaios_own_not_any(installed: Installed) -> None:
    """reveal_type shows the declared types, so the checks above are not passing on Any."""
    checked = mypy(installed, 'revealed.py', '''
        from lowhaio import Pool

        async def main() -> None:
            request, close = Pool()
            reveal_type(request)
            reveal_type(close)
            reveal_type(await request(b'GET', 'http://127.0.0.1:1/'))
    ''')
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # mypy before 2.0 writes builtins.bytes, later versions bytes
    revealed = [line.split('Revealed type is ', 1)[1].replace('builtins.', '')
                for line in checked.stdout.splitlines()]
    assert revealed == [
        '"lowhaio.PoolRequest"',
        '"lowhaio.Close"',
        '"tuple[bytes, tuple[tuple[bytes, bytes], ...], lowhaio.ResponseBody]"',
    ]


# ---------------------------------------------------------------------------------------------
# Programs with a type error fail, with that error
# ---------------------------------------------------------------------------------------------

PROGRAM_WITH = '''
    from typing import Any

    from lowhaio import Headers, Pool, Request, Response, buffered, streamed
    from lowhaio_retry import retry


    async def main() -> None:
        request, close = Pool()
        {line}
'''
# The line that {line} is on, in the program above
ERROR_LINE = 10

TYPE_ERRORS = [
    pytest.param("await request(b'GET', b'http://127.0.0.1/')", 'arg-type',
                 id='url-as-bytes'),
    pytest.param("await request('GET', 'http://127.0.0.1/')", 'arg-type',
                 id='method-as-str'),
    pytest.param("await request(b'GET', 'http://127.0.0.1/', headers=(('a', 'b'),))",
                 'arg-type', id='headers-as-str'),
    pytest.param("await request(b'PUT', 'http://127.0.0.1/', body=b'data')", 'arg-type',
                 id='body-as-bytes-not-a-function'),
    pytest.param("await request(b'GET', 'http://127.0.0.1/', timeout=5)", 'call-arg',
                 id='unknown-keyword'),
    pytest.param("text: str = await buffered((await request(b'GET', 'http://1/'))[2])",
                 'assignment', id='body-read-as-str'),
    pytest.param("code: int = (await request(b'GET', 'http://127.0.0.1/'))[0]",
                 'assignment', id='status-as-int'),
    pytest.param("retry(request).status()", 'attr-defined', id='status-of-wrapped-request'),
    pytest.param("await close(1)", 'call-arg', id='close-with-an-argument'),
    pytest.param("retry(lambda method, url: None)", 'arg-type',
                 id='wrapping-a-non-request'),
    pytest.param("streamed('text')", 'arg-type', id='streamed-str'),
]


@pytest.mark.parametrize('line, code', TYPE_ERRORS)
def test_a_program_with_a_type_error_fails(installed: Installed, line: str, code: str) -> None:
    checked = mypy(installed, 'wrong.py', PROGRAM_WITH.format(line=line))
    assert checked.returncode == 1, checked.stdout + checked.stderr
    errors = [entry for entry in checked.stdout.splitlines() if ': error: ' in entry]
    assert len(errors) == 1, checked.stdout
    assert errors[0].startswith('wrong.py:%d: error: ' % ERROR_LINE), checked.stdout
    assert errors[0].endswith('[%s]' % code), checked.stdout


WRONG_WRAPPERS = [
    pytest.param('''
        async def wrapped(method: bytes) -> Response:
            return await request(method, 'http://127.0.0.1/')
    ''', id='takes-no-url'),
    pytest.param('''
        async def wrapped(method: bytes, url: str, **kwargs: Any) -> bytes:
            return (await request(method, url, **kwargs))[0]
    ''', id='returns-the-code-only'),
    pytest.param('''
        async def wrapped(method: bytes, url: str, *, headers: list[str], **kwargs: Any
                          ) -> Response:
            return await request(method, url, **kwargs)
    ''', id='headers-of-another-type'),
    pytest.param('''
        def wrapped(method: bytes, url: str, **kwargs: Any) -> Response:
            return (b'200', (), streamed(b'')())
    ''', id='not-awaitable'),
]


@pytest.mark.parametrize('wrapper', WRONG_WRAPPERS)
def test_a_wrapper_that_is_not_a_request_fails(installed: Installed, wrapper: str) -> None:
    # Inside main(), where `request` is: indented as PROGRAM_WITH's body is, before dedenting
    program = PROGRAM_WITH.format(line='...') \
        + textwrap.indent(textwrap.dedent(wrapper), ' ' * 8) \
        + ' ' * 8 + 'wrapper: Request = wrapped\n'
    checked = mypy(installed, 'wrong_wrapper.py', program)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    errors = [entry for entry in checked.stdout.splitlines() if ': error: ' in entry]
    assert errors, checked.stdout
    # The mismatch is reported where the wrapper is used as a Request (and maybe inside it)
    assert any(entry.endswith('[assignment]') and 'Request' in entry for entry in errors), \
        checked.stdout


def test_without_the_stub_packages_the_module_is_untyped(installed: Installed) -> None:
    """The control: in a virtualenv with the stub-only packages removed, mypy finds lowhaio.py
    but will not read it (no py.typed), so the stubs are what give users the types."""
    venv = installed.work.parent / 'venv-without-stubs'
    shutil.copytree(installed.python.parent.parent, venv, symlinks=True)
    site_packages = venv / installed.site_packages.relative_to(installed.python.parent.parent)
    for stubs in site_packages.glob('*-stubs'):
        shutil.rmtree(stubs)
    assert (site_packages / 'lowhaio.py').is_file()
    checked = mypy(installed, 'untyped.py', WRAPPING_PROGRAM, python=venv / 'bin' / 'python')
    assert checked.returncode == 1
    assert 'untyped.py:5: error: Skipping analyzing "lowhaio": module is installed, but ' \
        'missing library stubs or py.typed marker  [import-untyped]' in checked.stdout, \
        checked.stdout
