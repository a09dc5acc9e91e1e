/* nurture tracking snippet: first-party page views under an anonymous visitor id.
 *
 *   <script async src="https://nurture.example.com/t.js"></script>
 *   <script async src="https://nurture.example.com/t.js" data-consent="required"></script>
 *
 * Records nothing, and sets no cookie, when the browser sends Do-Not-Track or Global Privacy
 * Control, or (with data-consent="required") until the site calls nurture("consent", true).
 * Page views are batched and sent with navigator.sendBeacon as text/plain (no preflight).
 * A tracked email link carries ?nurture_lead=<signed token>: it is sent once, so the visitor's
 * history joins that lead, and removed from the address bar.
 */
(function (window, document, navigator) {
  "use strict";
  var script = document.currentScript;
  if (!script || window.nurture && window.nurture.loaded) return;
  var COOKIE = "nurture_vid", PARAM = "nurture_lead", MAX_BATCH = 20, DELAY_MS = 1000;
  var endpoint = new URL("/t/collect", script.src).href;
  var consented = script.getAttribute("data-consent") !== "required";
  var queue = [], timer = null, leadToken = takeLeadToken();
  var waiting = window.nurture && window.nurture.q || [];

  function optedOut() {
    return navigator.doNotTrack === "1" || window.doNotTrack === "1" ||
      navigator.globalPrivacyControl === true;
  }

  function randomId() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    var bytes = crypto.getRandomValues(new Uint8Array(16)), hex = "";
    for (var i = 0; i < bytes.length; i++) hex += (bytes[i] + 256).toString(16).slice(1);
    return hex;
  }

  function visitorId() {
    var found = document.cookie.match(new RegExp("(?:^|; )" + COOKIE + "=([A-Za-z0-9-]{16,64})"));
    if (found) return found[1];
    var id = randomId();
    document.cookie = COOKIE + "=" + id + "; Max-Age=63072000; Path=/; SameSite=Lax" +
      (location.protocol === "https:" ? "; Secure" : "");
    return id;
  }

  function takeLeadToken() {
    var url = new URL(location.href), token = url.searchParams.get(PARAM);
    if (token === null) return null;
    url.searchParams.delete(PARAM);
    if (window.history && history.replaceState) history.replaceState(history.state, "", url.href);
    return token;
  }

  function send() {
    timer = null;
    if (!allowed()) { queue = []; return; }
    while (queue.length || leadToken) {
      var body = JSON.stringify({
        visitor: visitorId(), sent: Date.now(), lead_token: leadToken,
        events: queue.splice(0, MAX_BATCH)
      });
      leadToken = null;
      if (!(navigator.sendBeacon && navigator.sendBeacon(endpoint, body))) {
        fetch(endpoint, {method: "POST", body: body, keepalive: true, credentials: "omit",
                         headers: {"Content-Type": "text/plain"}});
      }
    }
  }

  function allowed() {
    return consented && !optedOut();
  }

  function record(type, properties) {
    if (!allowed()) return;
    queue.push({id: randomId(), type: type, at: Date.now(), properties: properties});
    if (timer === null) timer = setTimeout(send, DELAY_MS);
  }

  function page() {
    record("page_viewed", {
      url: location.href, path: location.pathname, title: document.title,
      referrer: document.referrer
    });
  }

  var commands = {
    page: page,
    consent: function (given) {
      consented = given === true;
      if (consented) { page(); return stampForms(); }
      queue = [];
      document.cookie = COOKIE + "=; Max-Age=0; Path=/; SameSite=Lax";
    },
    flush: send
  };

  function nurture(command) {
    var run = commands[command];
    if (run) run.apply(null, Array.prototype.slice.call(arguments, 1));
  }
  nurture.loaded = true;
  window.nurture = nurture;

  // Forms that post to nurture learn who filled them: a hidden field named nurture_visitor.
  function stampForms() {
    if (!allowed()) return;
    var fields = document.querySelectorAll('input[name="nurture_visitor"]');
    for (var i = 0; i < fields.length; i++) fields[i].value = visitorId();
  }

  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "hidden") send();
  });
  window.addEventListener("pagehide", send);
  page();
  for (var i = 0; i < waiting.length; i++) nurture.apply(null, waiting[i]);
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", stampForms);
  else stampForms();
})(window, document, navigator);
