# One image for every acme-orders service: `acme-orders run <service>` or `acme-orders migrate`.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The services' user; /var/lib/acme-orders is where its one-shot jobs may write (docker compose's
# RabbitMQ definitions, in a volume that takes this folder's owner).
RUN useradd --create-home --uid 10001 --user-group acme \
    && install -d -o acme -g acme /var/lib/acme-orders/rabbitmq

WORKDIR /app

# The dependencies first, read from pyproject.toml alone, so that a change to the source does not
# reinstall them.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# Then the package itself, not editable. The wheel carries db/ inside the package (hatch
# force-include), so db/ must be in the build context.
COPY src/ src/
COPY db/ db/
COPY examples/ examples/
RUN pip install --no-deps .

USER acme

EXPOSE 8000
ENTRYPOINT ["acme-orders"]
CMD ["run", "api"]
