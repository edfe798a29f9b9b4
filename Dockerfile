# The warmroute image: the control plane, and the simulated replica for the example pool.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY warmroute ./warmroute
RUN pip install --no-cache-dir . && useradd --uid 10001 --no-create-home warmroute
USER 10001
EXPOSE 18000 18001
ENTRYPOINT ["warmroute"]
CMD ["serve", "-c", "/etc/warmroute/config.yaml"]
