FROM python:3.11-slim
WORKDIR /app
COPY setup.cfg pyproject.toml README.md ./
COPY protocol protocol
COPY vstack vstack
COPY nodes nodes
COPY tools tools
COPY web web
RUN pip install --no-cache-dir .
ENV DATA_DIR=/data LOG_LEVEL=INFO
VOLUME /data
ENTRYPOINT ["vstack-node"]
CMD ["storage"]
