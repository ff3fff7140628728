// What a user might pick instead of the package: npm's web-push, sending with 64
// requests in flight on keep-alive connections (one https.Agent, at most 64 sockets).
//
//     NODE_PATH=/tmp/npm-webpush/node_modules NODE_EXTRA_CA_CERTS=cert.pem \
//         node benchmarks/webpush_node.js job.json
//
// job.json: {"subscriptions": [{"endpoint", "keys": {"p256dh", "auth"}}], "payload_b64",
// "vapid": {"subject", "public", "private"}, "concurrency": 64, "cached": false}.
// "cached": false signs the VAPID header on every call (what sendNotification does with
// setVapidDetails); true signs it once and passes it as a header. Prints one JSON line:
// {"rate": msgs/s, "sent": n, "failed": n, "cpu_ms_per_1000": ...}.
'use strict';

const fs = require('fs');
const https = require('https');
const webpush = require('web-push');

async function main() {
  const job = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
  const payload = Buffer.from(job.payload_b64, 'base64');
  const concurrency = job.concurrency || 64;
  const agent = new https.Agent({ keepAlive: true, maxSockets: concurrency });
  const options = { TTL: 3600, agent };
  if (job.cached) {
    const url = new URL(job.subscriptions[0].endpoint);
    const headers = webpush.getVapidHeaders(`${url.protocol}//${url.host}`, job.vapid.subject,
      job.vapid.public, job.vapid.private, 'aes128gcm');
    options.headers = { Authorization: headers.Authorization };
  } else {
    webpush.setVapidDetails(job.vapid.subject, job.vapid.public, job.vapid.private);
  }
  let next = 0;
  let sent = 0;
  let failed = 0;
  async function lane() {
    while (next < job.subscriptions.length) {
      const subscription = job.subscriptions[next];
      next += 1;
      try {
        await webpush.sendNotification(subscription, payload, options);
        sent += 1;
      } catch (error) {
        failed += 1;
        if (failed === 1) console.error(String(error.body || error));
      }
    }
  }
  const cpuBefore = process.cpuUsage();
  const start = process.hrtime.bigint();
  await Promise.all(Array.from({ length: concurrency }, lane));
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  const cpu = process.cpuUsage(cpuBefore);
  agent.destroy();
  const count = job.subscriptions.length;
  console.log(JSON.stringify({
    rate: count / seconds, sent, failed,
    cpu_ms_per_1000: (cpu.user + cpu.system) / 1000 / count * 1000,
  }));
}

main().catch((error) => { console.error(error); process.exit(1); });
