/* flask-webpush-targeted opt-in widget. Finds every [data-webpush-optin] element. */
(function () {
  'use strict';
  if (window.__webpushOptinLoaded) return;
  window.__webpushOptinLoaded = true;

  function keyBytes(b64) {
    const s = (b64 + '='.repeat((4 - b64.length % 4) % 4)).replace(/-/g, '+').replace(/_/g, '/');
    return Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
  }

  async function sha256hex(text) {
    const digest = await crypto.subtle.digest('SHA-256', new TextEncoder().encode(text));
    return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, '0')).join('');
  }

  // The page's texts in the customer's language: the server renders them into the widget's
  // [data-webpush-strings] blob; the English ones here are for a widget template without it.
  function texts(root) {
    const blob = root.querySelector('script[data-webpush-strings]');
    try {
      return blob ? JSON.parse(blob.textContent) : {};
    } catch (e) {
      return {};
    }
  }

  // A text of the blob (else ``fallback``) with its %(name)s filled from ``vars``.
  function translator(strings) {
    return function t(key, fallback, vars) {
      const text = typeof strings[key] === 'string' ? strings[key] : fallback;
      return text.replace(/%\((\w+)\)s/g, (all, name) =>
        (vars && name in vars ? String(vars[name]) : all));
    };
  }

  // The browser's language as BCP 47 (what the server accepts), or none.
  function browserLanguage() {
    const tag = navigator.language;
    return typeof tag === 'string' && tag.length <= 35 &&
      /^[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8})*$/.test(tag) ? tag : null;
  }

  function activated(reg, t) {
    if (reg.active) return Promise.resolve(reg);
    const worker = reg.installing || reg.waiting;
    return new Promise((resolve, reject) => {
      worker.addEventListener('statechange', () => {
        if (worker.state === 'activated') resolve(reg);
        if (worker.state === 'redundant') {
          reject(new Error(t('worker_failed', 'the service worker failed to install')));
        }
      });
    });
  }

  // The browser's IANA time zone, for sends at a local time and quiet hours; none if unknown.
  function timeZone() {
    try {
      const zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
      return typeof zone === 'string' && zone ? zone : null;
    } catch (e) {
      return null;
    }
  }

  // Why the server refused, for the customer: the widget's own text for the error's code
  // (the server's JSON messages are English), else the server's message.
  async function errorMessage(response, t) {
    try {
      const body = await response.json();
      const own = body.error ? t('error_' + body.error, '') : '';
      return own || body.message || response.statusText;
    } catch (e) {
      return response.statusText || ('HTTP ' + response.status);
    }
  }

  function init(root) {
    const cfg = root.dataset;
    const t = translator(texts(root));
    const status = root.querySelector('[data-webpush-status]');
    const boxes = Array.from(root.querySelectorAll('input[data-webpush-consent]'));
    const enable = root.querySelector('[data-webpush-enable]');
    const withdraw = root.querySelector('[data-webpush-withdraw]');
    const categories = Array.from(root.querySelectorAll('input[data-webpush-category]'));
    const jsonHeaders = { 'Accept': 'application/json', 'X-CSRF-Token': cfg.csrfToken };

    function withTimeout(promise, seconds) {
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          const err = new Error('no answer in ' + seconds + ' s');
          err.name = 'TimeoutError';
          err.seconds = seconds;
          reject(err);
        }, seconds * 1000);
        promise.then((v) => { clearTimeout(timer); resolve(v); },
          (e) => { clearTimeout(timer); reject(e); });
      });
    }

    // What happened and what to do, in the customer's words; the browser's own message
    // follows in brackets for whoever helps them.
    function subscribeFailure(err) {
      const name = err && err.name;
      const detail = err && err.message ? ' (' + err.message + ')' : '';
      if (name === 'TimeoutError') {
        return t('timeout', 'This browser got no answer from its push service in ' +
          '%(seconds)s seconds. It needs a connection to the internet (Chrome and Edge use ' +
          'Google\'s service, Firefox uses Mozilla\'s). Check the connection and try again, ' +
          'or try another browser. Nothing was saved.', { seconds: err.seconds });
      }
      if (name === 'NotAllowedError') {
        return t('not_allowed', 'This browser does not allow notifications here: in a ' +
          'private window, or when they are blocked in this site\'s settings. Use a normal ' +
          'window or allow notifications for this site, then try again. Nothing was saved.') +
          detail;
      }
      if (name === 'AbortError' || /push service|push subscription/i.test(String(err))) {
        return t('unreachable', 'This browser could not reach its push service, which ' +
          'needs a connection to the internet. Check the connection and try again, or try ' +
          'another browser. Nothing was saved.') + detail;
      }
      return t('failed', 'Your browser could not subscribe. Try again, or try another ' +
        'browser. Nothing was saved.') + detail;
    }

    function say(state, text) {
      root.dataset.state = state;
      status.textContent = text;
    }
    function consented() { return boxes.every((b) => b.checked); }
    function refresh() { enable.disabled = !consented(); }
    function choices() {
      const chosen = {};
      categories.forEach((b) => { chosen[b.dataset.webpushCategory] = b.checked; });
      return chosen;
    }
    function subscribeBody(sub) {
      const body = {
        subscription: sub.toJSON(),
        consent: { notifications: true, link_to_account: true, text_version: cfg.consentVersion },
      };
      // The language of the consent text shown: the ledger keeps which one was agreed to.
      if (cfg.consentLanguage) body.consent.language = cfg.consentLanguage;
      const zone = timeZone();
      if (zone) body.timezone = zone;
      const language = browserLanguage();
      if (language) body.language = language;
      if (categories.length) body.categories = choices();
      return body;
    }

    const supported = window.isSecureContext && 'serviceWorker' in navigator &&
      'PushManager' in window && 'Notification' in window;
    if (!supported) {
      boxes.concat(categories, [enable, withdraw]).forEach((el) => { el.disabled = true; });
      say('unsupported', t('unsupported', 'This browser cannot receive notifications from ' +
        'this site (it lacks the Push API, or the page is not served over HTTPS).'));
      return;
    }
    boxes.forEach((b) => b.addEventListener('change', refresh));
    refresh();

    const ready = navigator.serviceWorker.register(cfg.swUrl, { scope: cfg.swScope })
      .then((reg) => activated(reg, t));

    async function showCurrentState() {
      if (Notification.permission === 'denied') {
        say('denied', t('blocked', 'Notifications are blocked for this site in your browser ' +
          'settings. Allow them there, then come back.'));
        return;
      }
      const reg = await ready;
      const sub = await reg.pushManager.getSubscription();
      if (sub && Notification.permission === 'granted') {
        const [hash, response] = await Promise.all([
          sha256hex(sub.endpoint),
          fetch(cfg.subscriptionsUrl, { credentials: 'same-origin', headers: jsonHeaders }),
        ]);
        const list = response.ok ? (await response.json()).subscriptions : [];
        if (list.some((s) => s.active && s.endpoint_sha256 === hash)) {
          say('on', t('already_on', 'Notifications are already on for this browser.'));
          return;
        }
      }
      say('off', t('off', 'Notifications are off for this browser. Read the text above, tick ' +
        'both boxes and turn them on.'));
    }

    enable.addEventListener('click', async () => {
      if (!consented()) {
        say('need-consent', t('need_consent', 'Please tick both boxes first.'));
        return;
      }
      try {
        say('working', t('asking', 'Asking your browser for permission…'));
        const permission = await Notification.requestPermission();
        if (permission !== 'granted') {
          say('denied', permission === 'denied'
            ? t('denied', 'Your browser blocked notifications for this site. Nothing was saved.')
            : t('dismissed', 'You closed the browser\'s question without answering. Nothing ' +
              'was saved.'));
          return;
        }
        say('working', t('subscribing', 'Subscribing this browser…'));
        // A browser that cannot reach its push service may never answer (Chromium offline):
        // give up after a while and say so, rather than wait forever.
        const seconds = Math.max(1, Number(cfg.subscribeTimeout || 20000) / 1000);
        const reg = await withTimeout(ready, seconds);
        const sub = await withTimeout(reg.pushManager.getSubscription(), seconds) ||
          await withTimeout(reg.pushManager.subscribe({
            userVisibleOnly: true, applicationServerKey: keyBytes(cfg.vapidKey),
          }), seconds);
        const response = await fetch(cfg.subscriptionsUrl, {
          method: 'POST', credentials: 'same-origin',
          headers: Object.assign({ 'Content-Type': 'application/json' }, jsonHeaders),
          body: JSON.stringify(subscribeBody(sub)),
        });
        if (!response.ok) {
          say('error', t('save_failed', 'The shop could not save this browser: %(reason)s',
            { reason: await errorMessage(response, t) }));
          return;
        }
        if (reg.active) reg.active.postMessage({ type: 'webpush:subscribed' });
        withdraw.hidden = false;
        say('on', t('done', 'Done: notifications are on for this browser.'));
      } catch (err) {
        say('error', subscribeFailure(err));
      }
    });

    // Once notifications are on, a changed category is saved at once; before, it goes with
    // the opt-in.
    categories.forEach((box) => box.addEventListener('change', async () => {
      if (root.dataset.state !== 'on' || !cfg.preferencesUrl) return;
      try {
        const response = await fetch(cfg.preferencesUrl, {
          method: 'PUT', credentials: 'same-origin',
          headers: Object.assign({ 'Content-Type': 'application/json' }, jsonHeaders),
          body: JSON.stringify({
            categories: { [box.dataset.webpushCategory]: box.checked }, source: 'widget',
          }),
        });
        if (!response.ok) {
          box.checked = !box.checked;
          say('on', t('choice_failed', 'Your choice could not be saved: %(reason)s',
            { reason: await errorMessage(response, t) }));
          return;
        }
        say('on', t('choices_saved', 'Your choices are saved.'));
      } catch (err) {
        box.checked = !box.checked;
        say('on', t('choice_failed', 'Your choice could not be saved: %(reason)s',
          { reason: err && err.message ? err.message : err }));
      }
    }));

    // One click, one request: the button is disabled while its request runs, so a double
    // click cannot send a second withdrawal.
    withdraw.addEventListener('click', async () => {
      if (withdraw.disabled) return;
      withdraw.disabled = true;
      try {
        const response = await fetch(cfg.withdrawUrl, {
          method: 'POST', credentials: 'same-origin',
          headers: Object.assign({ 'Content-Type': 'application/json' }, jsonHeaders), body: '{}',
        });
        if (!response.ok) {
          say('error', t('withdraw_failed', 'Could not withdraw your consent: %(reason)s',
            { reason: await errorMessage(response, t) }));
          return;
        }
        const answer = await response.json();
        const reg = await ready;
        const sub = await reg.pushManager.getSubscription();
        if (sub) await sub.unsubscribe();
        boxes.forEach((b) => { b.checked = false; });
        refresh();
        withdraw.hidden = true;
        say('off', answer.withdrawn === false
          ? t('nothing_to_withdraw', 'You had not given your consent to notifications: there ' +
            'was nothing to withdraw.')
          : t('withdrawn', 'Your consent is withdrawn: no device of yours receives ' +
            'notifications now.'));
      } catch (err) {
        say('error', t('withdraw_failed', 'Could not withdraw your consent: %(reason)s',
          { reason: err && err.message ? err.message : err }));
      } finally {
        withdraw.disabled = false;
      }
    });

    showCurrentState().catch((err) => say('error', t('check_failed',
      'Could not check this browser: %(reason)s', { reason: err })));
  }

  function start() { document.querySelectorAll('[data-webpush-optin]').forEach(init); }
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
