// The CloudMart console's only script: the API key in prod, and live refresh.
//
// Where the API key is needed the server answers a page with the key prompt (401). The key
// typed there is kept in this tab's sessionStorage, never in a URL, a cookie or the page; from
// then on every link and form of the console is fetched with "Authorization: Bearer <key>"
// and the answer replaces the document. Without a stored key links and forms are plain ones.
// Elements with data-live="N" are fetched again every N seconds while they are on the page.
(function () {
  "use strict";
  var KEY = "cloudmart.apiKey";
  var UI = "/ui";
  var timers = [];

  function key() {
    return window.sessionStorage.getItem(KEY);
  }

  function request(url, init) {
    var options = init || {};
    var headers = new Headers(options.headers || {});
    if (key()) headers.set("Authorization", "Bearer " + key());
    options.headers = headers;
    options.credentials = "same-origin";
    return fetch(url, options);
  }

  function parse(html) {
    return new DOMParser().parseFromString(html, "text/html");
  }

  function swap(doc) {
    document.title = doc.title;
    document.body.replaceWith(document.adoptNode(doc.body));
    start();
    var heading = document.querySelector("main h1");
    if (heading) {
      heading.setAttribute("tabindex", "-1");
      heading.focus();
    }
  }

  function load(url, init, push) {
    return request(url, init).then(function (response) {
      return response.text().then(function (html) {
        var doc = parse(html);
        if (response.status === 401) {
          window.sessionStorage.removeItem(KEY);
          swap(doc);
          say("That key was refused; enter the deployment's API key.");
          return;
        }
        if (push) window.history.pushState({}, "", response.url);
        else window.history.replaceState({}, "", response.url);
        swap(doc);
      });
    });
  }

  function say(text) {
    var message = document.getElementById("key-message");
    if (message) message.textContent = text;
  }

  function inConsole(url) {
    return url.origin === window.location.origin &&
      (url.pathname === UI || url.pathname.indexOf(UI + "/") === 0);
  }

  document.addEventListener("click", function (event) {
    if (!key() || event.defaultPrevented || event.button !== 0) return;
    if (event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
    var link = event.target.closest("a[href]");
    if (!link) return;
    var url = new URL(link.href, window.location.href);
    if (!inConsole(url)) return;
    event.preventDefault();
    load(url.href, {}, true);
  });

  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (form.id === "key-form") {
      event.preventDefault();
      var input = form.querySelector("input[name=api_key]");
      window.sessionStorage.setItem(KEY, input.value);
      input.value = "";
      load(window.location.href, {}, false);
      return;
    }
    if (!key()) return;
    var submitter = event.submitter;
    var action = new URL(
      (submitter && submitter.getAttribute("formaction")) || form.getAttribute("action") ||
        window.location.href,
      window.location.href
    );
    if (!inConsole(action)) return;
    event.preventDefault();
    var data = new URLSearchParams(new FormData(form, submitter));
    if ((form.getAttribute("method") || "get").toLowerCase() === "post") {
      load(action.href, {
        method: "POST",
        headers: { "Content-Type": "application/x-www-form-urlencoded" },
        body: data.toString(),
      }, true);
    } else {
      action.search = data.toString();
      load(action.href, {}, true);
    }
  });

  window.addEventListener("popstate", function () {
    if (key()) load(window.location.href, {}, false);
  });

  // A live region is left alone while the operator is using it (a box ticked, focus inside).
  function busy(region) {
    return region.contains(document.activeElement) ||
      region.querySelector("input[type=checkbox]:checked") !== null;
  }

  function refresh(id) {
    var region = document.getElementById(id);
    if (!region || busy(region)) return;
    request(window.location.href).then(function (response) {
      if (!response.ok) return null;
      return response.text();
    }).then(function (html) {
      if (html === null || html === undefined) return;
      var fresh = parse(html).getElementById(id);
      var current = document.getElementById(id);
      if (!fresh || !current || busy(current)) return;
      current.replaceWith(document.adoptNode(fresh));
      if (!fresh.hasAttribute("data-live")) stopLive(id);
      // The status outside the live region (title, actions) comes with the next navigation.
      document.dispatchEvent(new CustomEvent("console:refreshed", { detail: id }));
    }).catch(function () { /* the next tick tries again */ });
  }

  function stopLive(id) {
    timers = timers.filter(function (timer) {
      if (timer.id !== id) return true;
      window.clearInterval(timer.handle);
      return false;
    });
  }

  function start() {
    timers.forEach(function (timer) { window.clearInterval(timer.handle); });
    timers = [];
    document.querySelectorAll("[data-live][id]").forEach(function (region) {
      var seconds = Math.max(1, Number(region.getAttribute("data-live")) || 2);
      var id = region.id;
      timers.push({ id: id, handle: window.setInterval(function () { refresh(id); }, seconds * 1000) });
    });
    if (document.getElementById("key-form")) {
      if (key()) load(window.location.href, {}, false);
      else document.getElementById("api-key").focus();
    }
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
