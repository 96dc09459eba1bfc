#!/usr/bin/env bash
# System packages the integration tests use, installed when missing (Debian's packages):
# Java for the local Spark session, Prometheus for the scrape test.
set -euo pipefail
need=()
command -v java >/dev/null 2>&1 || need+=(openjdk-17-jre-headless)
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
if ((${#need[@]})); then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    echo "installing ${need[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
