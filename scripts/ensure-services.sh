#!/usr/bin/env bash
# Make sure MariaDB (3306), Redis (6379) and RabbitMQ (5672) answer on 127.0.0.1.
# A server that is installed but stopped is started; one that is missing is installed with
# apt-get (root only). Waits for each port with a deadline; exits non-zero if one never comes up.
set -euo pipefail

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # name port seconds
  local deadline=$((SECONDS + $3))
  until port_open "$2"; do
    if ((SECONDS > deadline)); then echo "ensure-services: $1 did not open port $2" >&2; return 1; fi
    sleep 0.5
  done
}

missing=()
command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] || missing+=(mariadb-server)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v rabbitmq-server >/dev/null 2>&1 || [ -x /usr/sbin/rabbitmq-server ] || missing+=(rabbitmq-server)
installed_mariadb=no
if ((${#missing[@]})) && ! { port_open 3306 && port_open 6379 && port_open 5672; }; then
  if [ "$(id -u)" != 0 ]; then
    echo "ensure-services: please install ${missing[*]} (needs root)" >&2; exit 1
  fi
  echo "ensure-services: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
  [[ " ${missing[*]} " == *" mariadb-server "* ]] && installed_mariadb=yes
fi

if ! port_open 3306; then
  echo "ensure-services: starting MariaDB"
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld 2>/dev/null || true
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd -- --user=mysql
  wait_port MariaDB 3306 60
fi
if [ "$installed_mariadb" = yes ]; then
  # A fresh Debian MariaDB lets root in only over its socket; the tests connect over TCP.
  mariadb -uroot -e "ALTER USER 'root'@'localhost' IDENTIFIED VIA mysql_native_password USING PASSWORD('') OR unix_socket; FLUSH PRIVILEGES;" || true
fi
if ! port_open 6379; then
  echo "ensure-services: starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/cloudmart.log
  wait_port Redis 6379 30
fi
if ! port_open 5672; then
  echo "ensure-services: starting RabbitMQ"
  rabbitmq-server -detached
  wait_port RabbitMQ 5672 120
fi
echo "ensure-services: MariaDB, Redis and RabbitMQ are up"
