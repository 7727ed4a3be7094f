import setuptools


def long_description() -> str:
    with open('README.md', 'r', encoding='utf-8') as file:
        return file.read()


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
        # first that can limit the output of one call, which bounded decoding needs
        'compression': ['brotli>=1.2', 'zstandard>=0.18'],
        # The command-line client's progress bar; without it, the client works, with no bar
        'cli': ['tqdm>=4.60'],
        # lowhaio_httpx: an httpx transport
        'httpx': ['httpx>=0.25'],
        # lowhaio_asgi needs no package of its own, only an ASGI server to run it
        'asgi': ['uvicorn>=0.24'],
    },
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
