'use strict';
// One lwm2m-node-lib client for the tests in tests/lwm2m/test_server_peers.py.
//
//   node lwm2m_client.js HOST PORT ENDPOINT [LWM2M_VERSION]
//
// Creates /3/0 and /3303/0, registers with the server at HOST:PORT, then obeys JSON commands on stdin
// (one per line) and reports JSON events on stdout (one per line):
//
//   {"cmd": "set", "object": "/3303/0", "resource": "5700", "value": "24.5"}  -> a notification if observed
//   {"cmd": "update"}  {"cmd": "deregister"}  {"cmd": "exit"}
//
// Events: ready, registered, updated, deregistered, write, execute, read, error.

const readline = require('readline');
const logger = require('logops');
const lwm2m = require('lwm2m-node-lib');

const client = lwm2m.client;
const [host, port, endpoint, version] = process.argv.slice(2);

logger.setLevel('FATAL');

function emit(event) {
  process.stdout.write(JSON.stringify(event) + '\n');
}

client.init({
  client: {
    lifetime: '60',
    version: version || '1.0',
    logLevel: 'FATAL',
    observe: { period: 3000 },
    ipProtocol: 'udp4',
    serverProtocol: 'udp4',
    formats: [{ name: 'lightweightm2m/text', value: 1541 }],
    writeFormat: 'lightweightm2m/text',
  },
});

let device = null;

function installHandlers(serverInfo) {
  client.setHandler(serverInfo, 'write', (objectType, objectId, resourceId, value, callback) => {
    emit({ event: 'write', path: `/${objectType}/${objectId}/${resourceId}`, value: String(value) });
    callback();
  });
  client.setHandler(serverInfo, 'execute', (objectType, objectId, resourceId, args, callback) => {
    emit({ event: 'execute', path: `/${objectType}/${objectId}/${resourceId}`, args: String(args) });
    callback();
  });
  client.setHandler(serverInfo, 'read', (objectType, objectId, resourceId, value, callback) => {
    emit({ event: 'read', path: `/${objectType}/${objectId}/${resourceId}` });
    callback(null, value);
  });
}

function setup(done) {
  const steps = [
    ['/3/0', '0', 'Open Mobile Alliance'],
    ['/3/0', '1', 'Lightweight M2M Client'],
    ['/3/0', '2', endpoint],
    ['/3/0', '9', '87'],
    ['/3303/0', '5700', '21.5'],
    ['/3303/0', '5701', 'Cel'],
  ];
  client.registry.create('/3/0', (e1) => {
    if (e1) return done(e1);
    client.registry.create('/3303/0', (e2) => {
      if (e2) return done(e2);
      let i = 0;
      const next = (err) => {
        if (err) return done(err);
        if (i === steps.length) return done(null);
        const [uri, rid, value] = steps[i++];
        client.registry.setResource(uri, rid, value, next);
      };
      next(null);
    });
  });
}

function command(line) {
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch (e) {
    emit({ event: 'error', error: `bad command: ${line}` });
    return;
  }
  if (cmd.cmd === 'set') {
    client.registry.setResource(cmd.object, cmd.resource, cmd.value, (err) => {
      emit(err ? { event: 'error', error: String(err) } : { event: 'set', path: `${cmd.object}/${cmd.resource}` });
    });
  } else if (cmd.cmd === 'update') {
    client.update(device, (err) => {
      if (err) {
        emit({ event: 'error', error: String(err.message || err) });
        return;
      }
      installHandlers(device.serverInfo);
      emit({ event: 'updated', location: device.location });
    });
  } else if (cmd.cmd === 'deregister') {
    client.unregister(device, (err) => {
      emit(err ? { event: 'error', error: String(err.message || err) } : { event: 'deregistered' });
    });
  } else if (cmd.cmd === 'exit') {
    process.exit(0);
  } else {
    emit({ event: 'error', error: `unknown command: ${cmd.cmd}` });
  }
}

setup((err) => {
  if (err) {
    emit({ event: 'error', error: String(err) });
    process.exit(1);
  }
  emit({ event: 'ready' });
  client.register(host, port, '', endpoint, (error, deviceInformation) => {
    if (error) {
      emit({ event: 'error', error: String(error.message || error) });
      process.exit(1);
    }
    device = deviceInformation;
    installHandlers(device.serverInfo);
    emit({ event: 'registered', location: device.location, port: device.localPort });
  });
  readline.createInterface({ input: process.stdin }).on('line', command);
});
