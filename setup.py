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
        'lowhaio_httpx',
        'lowhaio_asgi',
    ],
    install_requires=[
        'aiodnsresolver>=0.0.157',
    ],
    extras_require={
        # lowhaio_httpx: an httpx transport
        'httpx': ['httpx>=0.25'],
        # lowhaio_asgi needs no package of its own, only an ASGI server to run it
        'asgi': ['uvicorn>=0.24'],
    },
    classifiers=[
        'Framework :: AsyncIO',
        'Intended Audience :: Developers',
        'Programming Language :: Python :: 3',
        'Topic :: Internet :: WWW/HTTP',
    ],
)
